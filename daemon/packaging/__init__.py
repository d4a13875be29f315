"""Packages: a school's issued records for one round, sealed as ASiC-E and sent to the ministry.

* `builder.Packager` builds and seals a package (the data flows: waiting records →
  `packages` rows → `container` bytes → the seal's CMS signature → a stored blob).
* `submission.Submitter` follows a package to the ministry's verdict.
* `runner.PackageRunner` does both on a schedule (`schedule.due_rounds`) and on request.
* `check` verifies a container as the ministry would; `container` writes and reads one.
* `packages` holds the SQL of packages and their records.

It imports the service's foundations (database, errors, metrics, settings, stages, clock)
and nothing above them: the seal key, the store and the ministry arrive as arguments.
"""
