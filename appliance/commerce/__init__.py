"""Creator commerce: creators, promo codes, membership tiers, partner offers."""
