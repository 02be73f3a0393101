"""Dashboard pages of waves and saved device lists. "new" and "lists" are reserved path words,
so a wave with one of those names is reached through the API and CLI only."""
from django.urls import path

from . import devicelist_views, plan_views, rollout_views, status_views, views

urlpatterns = [
    path("", views.wave_list, name="wave-list"),
    path("new/", views.wave_create, name="wave-create"),
    path("new/revert/", views.wave_revert, name="wave-revert"),
    path("lists/", devicelist_views.device_list_index, name="devicelist-list"),
    path("lists/new/", devicelist_views.device_list_create, name="devicelist-create"),
    path("lists/<int:list_id>/", devicelist_views.device_list_detail, name="devicelist-detail"),
    path("lists/<int:list_id>/export/", devicelist_views.device_list_export, name="devicelist-export"),
    path("lists/<int:list_id>/delete/", devicelist_views.device_list_delete, name="devicelist-delete"),
    path("<str:name>/", views.wave_detail, name="wave-detail"),
    path("<str:name>/sign/", views.wave_sign, name="wave-sign"),
    path("<str:name>/complete/", views.wave_complete, name="wave-complete"),
    path("<str:name>/cancel/", views.wave_cancel, name="wave-cancel"),
    path("<str:name>/retry/", views.wave_retry, name="wave-retry"),
    path("<str:name>/plan/", plan_views.plan_detail, name="plan-detail"),
    path("<str:name>/plan/panel/", plan_views.plan_panel, name="plan-panel"),
    path("<str:name>/plan/edit/", plan_views.plan_edit, name="plan-edit"),
    path("<str:name>/plan/templates/save/", plan_views.plan_template_save, name="plan-template-save"),
    path("<str:name>/plan/templates/<int:template_id>/delete/", plan_views.plan_template_delete, name="plan-template-delete"),
    path("<str:name>/plan/<slug:action>/", plan_views.plan_action, name="plan-action"),
    path("<str:name>/rollouts/<int:rollout_id>/devices.txt", views.rollout_devices_download, name="rollout-devices"),
    path("<str:name>/rollouts/<int:rollout_id>/devices/", views.rollout_devices_page, name="rollout-devices-page"),
    path("<str:name>/rollout/", rollout_views.rollout_preview, name="rollout-preview"),
    path("<str:name>/rollout-jobs/<str:token>/", rollout_views.rollout_job, name="rollout-job"),
    path("<str:name>/rollout/<str:token>/", rollout_views.rollout_preview_show, name="rollout-preview-show"),
    path("<str:name>/rollout/<str:token>/edit/", rollout_views.rollout_preview_edit, name="rollout-preview-edit"),
    path("<str:name>/rollout/<str:token>/download/", rollout_views.rollout_preview_download, name="rollout-preview-download"),
    path("<str:name>/rollout/<str:token>/save/", rollout_views.rollout_preview_save, name="rollout-preview-save"),
    path("<str:name>/rollout/<str:token>/go/", rollout_views.rollout_perform, name="rollout-perform"),
    path("<str:name>/live/", status_views.wave_live_status, name="wave-live-status"),
    path("<str:name>/status.csv", status_views.wave_status_csv, name="wave-status-csv"),
    path("<str:name>/status-history.csv", status_views.wave_status_history_csv, name="wave-status-history-csv"),
]
