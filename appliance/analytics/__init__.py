"""Night figures, the night report, wellness notes and erasure of contacts.

Every figure that is shown or leaves the box is an aggregate, and a figure
about fewer than :data:`~appliance.analytics.suppression.MIN_GROUP` guests
is suppressed (see ``docs/analytics.md``).
"""
