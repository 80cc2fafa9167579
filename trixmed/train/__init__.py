"""Training engine: Ray Train launches the workers, DeepSpeed owns the optimizer inside each one.

Model code stays free of Ray/DeepSpeed; everything distributed lives here.
"""
