"""Domain errors of projects; the one exception handler turns them into JSON."""


class ProjectError(Exception):
    code = "project_error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class ProjectInvalid(ProjectError):
    code = "invalid"


class ProjectNotFound(ProjectError):
    code = "not_found"
    http_status = 404


class TaskNotFound(ProjectError):
    code = "not_found"
    http_status = 404


class ProjectStateConflict(ProjectError):
    """The project or task is not in a state that allows this operation."""

    code = "invalid_state"
    http_status = 409


class PlannerFailed(ProjectError):
    code = "planner_failed"
    http_status = 502
