"""The ground floor shared by the login node (``harness``) and the compute node (``jobs``).

Every contract between the two is written here, once: a spec per stage and the exit codes
(``records.spec``; each job option a field of its spec, ``records.fields``), the jobs'
command lines generated from them (``records.options``), the
record kinds a job emits (``records.kinds``), the outbox they are appended to
(``records.outbox``), the job folder's lock (``records.lock``), the results store and its
schema (``records.store``, ``records.schema``) and the reads behind every table
(``records.queries``). Nothing here imports torch, ``jobs`` or ``harness``.
"""
