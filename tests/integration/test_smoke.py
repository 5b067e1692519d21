def test_template_is_at_head(db_url):
    from aiecs_persistence import migrate

    assert migrate.inspect(db_url).ok
