"""Running a scenario: the runner (every sweep point and deployment) and the report writers."""
