from django.urls import path

from taskqueue import apis

urlpatterns = [
    path("projects", apis.ProjectCollectionApi.as_view(), name="projects"),
    path("projects/plan", apis.ProjectPlanApi.as_view(), name="projects-plan"),
    path("projects/<int:project_id>", apis.ProjectDetailApi.as_view(), name="project-detail"),
    path(
        "projects/<int:project_id>/result", apis.ProjectResultApi.as_view(), name="project-result"
    ),
    path(
        "projects/<int:project_id>/artifacts",
        apis.ProjectArtifactsApi.as_view(),
        name="project-artifacts",
    ),
    path(
        "projects/<int:project_id>/cancel", apis.ProjectCancelApi.as_view(), name="project-cancel"
    ),
    path("projects/<int:project_id>/pause", apis.ProjectPauseApi.as_view(), name="project-pause"),
    path(
        "projects/<int:project_id>/resume", apis.ProjectResumeApi.as_view(), name="project-resume"
    ),
    path(
        "projects/<int:project_id>/tasks/<str:key>/retry",
        apis.TaskRetryApi.as_view(),
        name="project-task-retry",
    ),
]
