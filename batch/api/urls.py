from rest_framework.routers import SimpleRouter

from batch.api.views import BatchJobViewSet

router = SimpleRouter()
router.register("batch-jobs", BatchJobViewSet, basename="batch-job")
urlpatterns = router.urls
