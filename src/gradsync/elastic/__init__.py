"""Elastic training: a worker that dies costs one relaunch of the world from the last commit.

MPI cannot shrink or grow a running world, so the unit of recovery is a relaunch supervised by
``gradsyncrun`` (``supervisor``). Workers keep their last commit in memory (``state``); when
the world is stopped they write it to the job's state folder (``storage``, ``worker``), and the
relaunched rank 0 loads the newest complete one and broadcasts it.

This package imports neither TensorFlow nor, until a worker uses it, MPI: the launcher uses it
too. The TensorFlow states and ``run`` are in ``gradsync.tensorflow.elastic``.
"""
