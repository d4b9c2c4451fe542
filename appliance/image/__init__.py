"""The appliance image: the box's file layout, first boot and data partition."""
