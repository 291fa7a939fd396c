"""One ``APIRouter`` per resource of ``minutecast serve``; :func:`web.app.create_app` includes them."""
