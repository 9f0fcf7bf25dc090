"""Aggregation stages: time-of-week bucketing, mergeable speed histograms, speed estimation with back-off.

`kernels` is pure Python/numpy/pandas (unit-tested without a JVM); `transforms` holds the Spark
DataFrame -> DataFrame steps the apps in spark_apps/ chain.
"""
