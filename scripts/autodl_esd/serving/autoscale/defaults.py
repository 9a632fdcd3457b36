"""The autoscaler's defaults, apart from the policy so that serve_gateway.py --help can show
them without importing dataclasses and typing (start-up time)."""

# Ray Serve's defaults (target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s
# 600, look_back_period_s 30): users of the field know them, and nothing on AutoDL argues
# for other values except start-up time, which the converging rule already covers.
DEFAULT_TARGET_INFLIGHT = 2.0
DEFAULT_UPSCALE_DELAY = 30.0
DEFAULT_DOWNSCALE_DELAY = 600.0
DEFAULT_LOOK_BACK = 30.0
DEFAULT_MIN_REPLICAS = 1
