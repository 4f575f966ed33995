"""HTTP routes, one blueprint per route family (SPEC §4)."""

from .client_has_addon import bp as client_has_addon_bp
from .ops import bp as ops_bp
from .recommendations import bp as recommendations_bp
from .taarlite import bp as taarlite_bp

BLUEPRINTS = (recommendations_bp, client_has_addon_bp, taarlite_bp, ops_bp)


def register_blueprints(app) -> None:
    """Register every route family on ``app``."""
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
