"""lbind plugin: the imu modality (wearable inertial measurements: 3-axis accelerometer and 3-axis gyroscope).

This module is the plugin: the ``lbind`` entry point in pyproject.toml names it, and lbind calls its hooks.
Importing it does no work; the modality module is imported when the hook runs.
"""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_imu.modality import ImuModality

    register(ImuModality)
