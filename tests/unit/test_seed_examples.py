"""The seed document's usage examples, run unchanged against our package.

Only the import path changed (``aiecs.domain.execution.model`` → ``aiecs_persistence``). The
example functions below are the seed's own text; the tests call them and assert what they
print or return.
"""

from __future__ import annotations

from typing import Any, Dict, List

from aiecs_persistence import ErrorCode, TaskStatus, TaskStepResult

# ---- seed: TaskStatus usage example ---------------------------------------------------------


def test_task_status_usage(capsys):
    # Create task status
    status = TaskStatus.PENDING
    print(f"Task status: {status.value}")  # "pending"

    # Status comparison
    if status == TaskStatus.PENDING:
        print("Task is waiting to start")

    # State transition
    status = TaskStatus.RUNNING
    print(f"Task is now: {status.value}")  # "running"

    # Get all statuses
    all_statuses = [status.value for status in TaskStatus]
    print(f"All statuses: {all_statuses}")

    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Task status: pending",
        "Task is waiting to start",
        "Task is now: running",
        "All statuses: ['pending', 'running', 'completed', 'cancelled', 'timed_out', 'failed']",
    ]


# ---- seed: ErrorCode usage example ----------------------------------------------------------


def test_error_code_usage(capsys):
    # Create error code
    error_code = ErrorCode.VALIDATION_ERROR
    print(f"Error code: {error_code.value}")  # "E001"

    # Error code comparison
    if error_code == ErrorCode.VALIDATION_ERROR:
        print("This is a validation error")

    # Get error code descriptions
    error_descriptions = {
        ErrorCode.VALIDATION_ERROR: "Parameter validation error",
        ErrorCode.TIMEOUT_ERROR: "Execution timeout error",
        ErrorCode.EXECUTION_ERROR: "Execution error",
        ErrorCode.CANCELLED_ERROR: "Cancellation error",
        ErrorCode.RETRY_EXHAUSTED: "Retry exhausted error",
        ErrorCode.DATABASE_ERROR: "Database error",
        ErrorCode.DSL_EVALUATION_ERROR: "DSL evaluation error"
    }

    print(f"Error description: {error_descriptions[error_code]}")

    assert capsys.readouterr().out.splitlines() == [
        "Error code: E001",
        "This is a validation error",
        "Error description: Parameter validation error",
    ]
    # The same table is what ErrorCode.description returns.
    assert {c: c.description for c in ErrorCode} == error_descriptions


# ---- seed: TaskStepResult usage example -----------------------------------------------------


def test_task_step_result_usage(capsys):
    # Create success result
    success_result = TaskStepResult(
        step="pandas_tool.read_csv",
        result={"rows": 1000, "columns": 5},
        completed=True,
        message="Successfully read CSV file",
        status=TaskStatus.COMPLETED.value
    )

    print(f"Success result: {success_result}")
    print(f"Result data: {success_result.dict()}")

    # Create failure result
    failure_result = TaskStepResult(
        step="pandas_tool.read_csv",
        result=None,
        completed=False,
        message="Failed to read CSV file",
        status=TaskStatus.FAILED.value,
        error_code=ErrorCode.EXECUTION_ERROR.value,
        error_message="File not found: data.csv"
    )

    print(f"Failure result: {failure_result}")
    print(f"Error code: {failure_result.error_code}")
    print(f"Error message: {failure_result.error_message}")

    assert capsys.readouterr().out.splitlines() == [
        "Success result: TaskStepResult(step='pandas_tool.read_csv', status='completed', "
        "completed=True)",
        "Result data: {'step': 'pandas_tool.read_csv', 'result': {'rows': 1000, 'columns': 5}, "
        "'completed': True, 'message': 'Successfully read CSV file', 'status': 'completed', "
        "'error_code': None, 'error_message': None}",
        "Failure result: TaskStepResult(step='pandas_tool.read_csv', status='failed', "
        "completed=False)",
        "Error code: E003",
        "Error message: File not found: data.csv",
    ]
    assert success_result.is_consistent() and failure_result.is_consistent()


# ---- seed: "Usage Examples" section ---------------------------------------------------------


def manage_task_lifecycle():
    """Manage task lifecycle"""
    # Initial state
    current_status = TaskStatus.PENDING
    print(f"Task started with status: {current_status.value}")

    # State transition
    current_status = TaskStatus.RUNNING
    print(f"Task is now: {current_status.value}")

    # Check state
    if current_status == TaskStatus.RUNNING:
        print("Task is currently running")

    # Completion state
    current_status = TaskStatus.COMPLETED
    print(f"Task finished with status: {current_status.value}")


def handle_task_errors():
    """Handle task errors"""
    error_codes = [
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.TIMEOUT_ERROR,
        ErrorCode.EXECUTION_ERROR
    ]

    for error_code in error_codes:
        print(f"Error code: {error_code.value}")

        if error_code == ErrorCode.VALIDATION_ERROR:
            print("This is a validation error - check input parameters")
        elif error_code == ErrorCode.TIMEOUT_ERROR:
            print("This is a timeout error - task took too long")
        elif error_code == ErrorCode.EXECUTION_ERROR:
            print("This is an execution error - check business logic")


def test_basic_state_management(capsys):
    manage_task_lifecycle()
    handle_task_errors()
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        "Task started with status: pending",
        "Task is now: running",
        "Task is currently running",
        "Task finished with status: completed",
    ]
    assert out[4:] == [
        "Error code: E001",
        "This is a validation error - check input parameters",
        "Error code: E002",
        "This is a timeout error - task took too long",
        "Error code: E003",
        "This is an execution error - check business logic",
    ]
    # The lifecycle it walks is legal in our state machine.
    assert TaskStatus.PENDING.can_transition_to(TaskStatus.RUNNING)
    assert TaskStatus.RUNNING.can_transition_to(TaskStatus.COMPLETED)


def create_success_result():
    """Create success result"""
    result = TaskStepResult(
        step="data_processing",
        result={"processed_rows": 1000, "output_file": "result.csv"},
        completed=True,
        message="Data processing completed successfully",
        status=TaskStatus.COMPLETED.value
    )

    print(f"Success result: {result}")
    print(f"Result data: {result.dict()}")
    return result


def create_failure_result():
    """Create failure result"""
    result = TaskStepResult(
        step="data_processing",
        result=None,
        completed=False,
        message="Data processing failed",
        status=TaskStatus.FAILED.value,
        error_code=ErrorCode.EXECUTION_ERROR.value,
        error_message="Invalid data format detected"
    )

    print(f"Failure result: {result}")
    print(f"Error details: {result.error_code} - {result.error_message}")
    return result


def process_results(results: List[TaskStepResult]):
    """Process result list"""
    success_count = 0
    failure_count = 0

    for result in results:
        if result.completed:
            success_count += 1
            print(f"✅ {result.step}: {result.message}")
        else:
            failure_count += 1
            print(f"❌ {result.step}: {result.message}")
            if result.error_code:
                print(f"   Error: {result.error_code} - {result.error_message}")

    print(f"Summary: {success_count} successful, {failure_count} failed")


def test_result_model_usage(capsys):
    ok = create_success_result()
    bad = create_failure_result()
    capsys.readouterr()
    process_results([ok, bad])
    assert capsys.readouterr().out.splitlines() == [
        "✅ data_processing: Data processing completed successfully",
        "❌ data_processing: Data processing failed",
        "   Error: E003 - Invalid data format detected",
        "Summary: 1 successful, 1 failed",
    ]


def create_celery_task_result(status: TaskStatus, error_code: ErrorCode = None):
    """Create Celery task result"""
    result = {
        "status": status.value,
        "completed": status == TaskStatus.COMPLETED,
        "message": f"Task {status.value}"
    }

    if error_code:
        result["error_code"] = error_code.value
        result["error_message"] = f"Task failed with {error_code.value}"

    return result


def test_celery_integration_dict_builds_a_consistent_result():
    failed = create_celery_task_result(TaskStatus.FAILED, ErrorCode.EXECUTION_ERROR)
    step = TaskStepResult.from_dict({"step": "celery.task", "result": None, **failed})
    assert step.status == "failed" and step.error_code == "E003"
    assert step.is_consistent()
    done = TaskStepResult.from_dict(
        {"step": "celery.task", "result": 1, **create_celery_task_result(TaskStatus.COMPLETED)}
    )
    assert done.completed is True and done.is_consistent()


def validate_result(result: TaskStepResult) -> bool:
    """Validate result validity"""
    if not result.step:
        print("❌ Result missing step identifier")
        return False

    if result.completed and result.result is None:
        print("❌ Completed result missing result data")
        return False

    if not result.completed and result.error_code is None:
        print("❌ Failed result missing error code")
        return False

    print("✅ Result validation passed")
    return True


def convert_result_to_dict(result: TaskStepResult) -> Dict[str, Any]:
    """Convert result to dictionary format"""
    return result.dict()


def convert_dict_to_result(data: Dict[str, Any]) -> TaskStepResult:
    """Create result object from dictionary"""
    return TaskStepResult(
        step=data["step"],
        result=data["result"],
        completed=data["completed"],
        message=data["message"],
        status=data["status"],
        error_code=data.get("error_code"),
        error_message=data.get("error_message")
    )


def compare_results(result1: TaskStepResult, result2: TaskStepResult) -> bool:
    """Compare if two results are equal"""
    return (result1.step == result2.step and
            result1.completed == result2.completed and
            result1.status == result2.status)


def test_advanced_usage(capsys):
    ok = TaskStepResult("s", {"x": 1}, True, "done", "completed")
    assert validate_result(ok) is True
    assert validate_result(TaskStepResult("", 1)) is False
    assert validate_result(TaskStepResult("s", None, True, status="completed")) is False
    assert validate_result(TaskStepResult("s", None)) is False
    assert capsys.readouterr().out.splitlines() == [
        "✅ Result validation passed",
        "❌ Result missing step identifier",
        "❌ Completed result missing result data",
        "❌ Failed result missing error code",
    ]
    again = convert_dict_to_result(convert_result_to_dict(ok))
    assert again == ok and again is not ok
    assert compare_results(ok, again)


# ---- seed: Maintenance Guide ----------------------------------------------------------------


def validate_models_health():
    """Validate model health status"""
    try:
        # Test status enum
        status = TaskStatus.PENDING
        assert status.value == "pending"
        print("✅ TaskStatus validation passed")

        # Test error code enum
        error_code = ErrorCode.VALIDATION_ERROR
        assert error_code.value == "E001"
        print("✅ ErrorCode validation passed")

        # Test result model
        result = TaskStepResult(
            step="test_step",
            result="test_result",
            completed=True,
            status=TaskStatus.COMPLETED.value
        )
        assert result.step == "test_step"
        assert result.completed == True
        print("✅ TaskStepResult validation passed")

        return True

    except Exception as e:
        print(f"❌ Model validation failed: {e}")
        return False


def check_data_consistency(result: TaskStepResult):
    """Check result data consistency"""
    try:
        # Check basic fields
        if not result.step:
            print("❌ Missing step identifier")
            return False

        # Check status consistency
        if result.completed and result.status != TaskStatus.COMPLETED.value:
            print("❌ Completed result has wrong status")
            return False

        if not result.completed and result.status == TaskStatus.COMPLETED.value:
            print("❌ Incomplete result has completed status")
            return False

        # Check error information consistency
        if result.error_code and not result.error_message:
            print("❌ Error code without error message")
            return False

        if result.error_message and not result.error_code:
            print("❌ Error message without error code")
            return False

        print("✅ Data consistency check passed")
        return True

    except Exception as e:
        print(f"❌ Data consistency check failed: {e}")
        return False


def test_models_health(capsys):
    assert validate_models_health() is True
    assert "❌" not in capsys.readouterr().out


# The seed's own inconsistent results, each with the rule our check must report.
SEED_INCONSISTENT = [
    (TaskStepResult("", 1), "step", "❌ Missing step identifier"),
    (TaskStepResult("s", 1, True, status="failed", error_code="E003", error_message="x"),
     "completed", "❌ Completed result has wrong status"),
    (TaskStepResult("s", 1, False, status="completed"),
     "completed", "❌ Incomplete result has completed status"),
    (TaskStepResult("s", 1, False, status="failed", error_code="E003"),
     "error_message", "❌ Error code without error message"),
    (TaskStepResult("s", 1, False, status="failed", error_message="boom"),
     "error_code", "❌ Error message without error code"),
]


def test_seed_consistency_examples_agree_with_our_check(capsys):
    for result, field, seed_says in SEED_INCONSISTENT:
        assert check_data_consistency(result) is False
        assert capsys.readouterr().out.strip() == seed_says
        problems = result.problems()
        assert problems, result
        assert problems[0].split(":")[0] == field
    good = TaskStepResult("s", 1, True, "ok", "completed")
    assert check_data_consistency(good) is True and good.problems() == []


def diagnose_status_transition_error():
    """Diagnose state transition errors"""
    try:
        # Test invalid state transition
        current_status = TaskStatus.PENDING
        next_status = TaskStatus.COMPLETED  # Skipping RUNNING

        if current_status == TaskStatus.PENDING and next_status == TaskStatus.COMPLETED:
            print("❌ Invalid status transition: PENDING → COMPLETED")
            print("   Valid transitions from PENDING: RUNNING")

        # Test valid state transition
        current_status = TaskStatus.PENDING
        next_status = TaskStatus.RUNNING

        if current_status == TaskStatus.PENDING and next_status == TaskStatus.RUNNING:
            print("✅ Valid status transition: PENDING → RUNNING")

    except Exception as e:
        print(f"❌ Status transition diagnosis failed: {e}")


def diagnose_error_code_mapping_error():
    """Diagnose error code mapping errors"""
    try:
        # Test error code mapping
        error_mappings = {
            "validation_error": ErrorCode.VALIDATION_ERROR,
            "timeout_error": ErrorCode.TIMEOUT_ERROR,
            "execution_error": ErrorCode.EXECUTION_ERROR,
            "cancelled_error": ErrorCode.CANCELLED_ERROR,
            "retry_exhausted": ErrorCode.RETRY_EXHAUSTED,
            "database_error": ErrorCode.DATABASE_ERROR,
            "dsl_evaluation_error": ErrorCode.DSL_EVALUATION_ERROR
        }

        for error_name, error_code in error_mappings.items():
            if error_code.value != f"E{error_code.value[1:].zfill(3)}":
                print(f"❌ Invalid error code format: {error_code.value}")
            else:
                print(f"✅ Valid error code: {error_code.value}")

    except Exception as e:
        print(f"❌ Error code mapping diagnosis failed: {e}")


def test_troubleshooting(capsys):
    diagnose_status_transition_error()
    diagnose_error_code_mapping_error()
    out = capsys.readouterr().out
    assert "failed:" not in out
    assert out.count("✅ Valid error code") == 7
    assert not TaskStatus.PENDING.can_transition_to(TaskStatus.COMPLETED)
    assert TaskStatus.PENDING.can_transition_to(TaskStatus.RUNNING)


def optimize_object_creation():
    """Optimize object creation performance"""
    import time

    # Test enum creation performance
    start_time = time.time()
    for i in range(10000):
        status = TaskStatus.PENDING
        error_code = ErrorCode.VALIDATION_ERROR
    enum_time = time.time() - start_time

    # Test result object creation performance
    start_time = time.time()
    for i in range(10000):
        result = TaskStepResult(
            step=f"step_{i}",
            result=f"result_{i}",
            completed=True,
            status=TaskStatus.COMPLETED.value
        )
    result_time = time.time() - start_time

    print(f"Enum creation time: {enum_time:.4f}s")
    print(f"Result creation time: {result_time:.4f}s")


def optimize_memory_usage():
    """Optimize memory usage"""
    import gc
    import sys

    # Create many objects
    results = []
    for i in range(10000):
        result = TaskStepResult(
            step=f"step_{i}",
            result=f"result_{i}",
            completed=True,
            status=TaskStatus.COMPLETED.value
        )
        results.append(result)

    print(f"Memory usage before cleanup: {sys.getsizeof(results)} bytes")

    # Clean up objects
    results.clear()
    gc.collect()

    print(f"Memory usage after cleanup: {sys.getsizeof(results)} bytes")


def test_performance_examples_run(capsys):
    optimize_object_creation()
    optimize_memory_usage()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Enum creation time: ")
    assert out[1].startswith("Result creation time: ")
    assert out[2].startswith("Memory usage before cleanup: ")


def migrate_models_to_new_version(old_data: Dict[str, Any]) -> Dict[str, Any]:
    """Migrate model data to new version"""
    # Check version
    version = old_data.get("version", "1.0")

    if version == "1.0":
        # Upgrade from 1.0 to 1.1
        if "status" in old_data:
            # Update status values
            if old_data["status"] == "success":
                old_data["status"] = "completed"
            elif old_data["status"] == "error":
                old_data["status"] = "failed"

        old_data["version"] = "1.1"

    return old_data


def test_data_migration_matches_ours():
    from aiecs_persistence.domain import migrate_record

    for record in ({"status": "success"}, {"status": "error", "version": "1.0"},
                   {"status": "running"}, {"status": "success", "version": "1.1"}, {}):
        ours = migrate_record(record)
        assert ours == migrate_models_to_new_version(dict(record))
    frozen = {"status": "success"}
    migrate_record(frozen)
    assert frozen == {"status": "success"}, "our migration never modifies its input"


def test_convert_data_formats(capsys):
    # Convert from old format to new format
    old_result = {
        "operation": "data_processing",
        "output": {"rows": 1000},
        "success": True,
        "message": "Processing completed"
    }

    # Convert to new format
    new_result = TaskStepResult(
        step=old_result["operation"],
        result=old_result["output"],
        completed=old_result["success"],
        message=old_result["message"],
        status=TaskStatus.COMPLETED.value if old_result["success"] else TaskStatus.FAILED.value
    )

    print(f"Converted result: {new_result}")
    assert capsys.readouterr().out.strip() == (
        "Converted result: TaskStepResult(step='data_processing', status='completed', "
        "completed=True)"
    )
    assert TaskStepResult.from_legacy(old_result) == new_result
