"""The machinery behind :class:`dlexec.DatalayerExecutor`, one concept per module.

``work``        WorkItem (a submitted call and where it stands) and Batch (items sent together)
``handle``      WorkerHandle: one runtime of the pool, its State, in-flight batches, blob cache
``scheduler``   plan(): which queued items go to which worker now (a pure function)
``results``     a run reply's results, read into outcomes for the futures
``supervisor``  starts, initializes, restarts, retires and watches the runtimes
``pool``        Pool: the lock, the queue, the futures, dispatch, break and shutdown

See :mod:`dlexec.executor` for the data flow.
"""
