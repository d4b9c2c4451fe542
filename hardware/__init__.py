"""Small interfaces over the box's devices, each with a real backend and a simulator."""
