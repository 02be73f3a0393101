from django.urls import path

from . import views

urlpatterns = [
    path("groups/", views.group_list, name="group-list"),
    path("groups/new/", views.group_create, name="group-create"),
    path("groups/assign/", views.group_assign, name="group-assign"),
    path("groups/<int:group_id>/rename/", views.group_rename, name="group-rename"),
    path("groups/<int:group_id>/delete/", views.group_delete, name="group-delete"),
    path("<uuid:uuid>/tag/", views.device_tag_update, name="device-tag-update"),
    path("dead-letters/", views.dead_letter_list, name="dead-letter-list"),
]
