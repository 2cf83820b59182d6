"""accelpilot: watch and steer fleets of AI accelerators.

The repository keeps the design card's top-level folders (collectors/, streams/, detectors/,
optimizer/, dashboards/); they are installed as ``accelpilot.<part>``.
"""

__version__ = "0.1.0"
