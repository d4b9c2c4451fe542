"""Recovery kits, opt-ins and follow-up coupons."""

from appliance.kits._coupons import coupon_code, is_valid_coupon_code
from appliance.kits.service import KitService

__all__ = ["KitService", "coupon_code", "is_valid_coupon_code"]
