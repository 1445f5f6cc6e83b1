from rest_framework.routers import SimpleRouter

from batch.api.views import BatchJobViewSet, BatchScheduleViewSet

router = SimpleRouter()
router.register("batch-jobs", BatchJobViewSet, basename="batch-job")
router.register("batch/schedules", BatchScheduleViewSet, basename="batch-schedule")
urlpatterns = router.urls
