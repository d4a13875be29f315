"""The record as data: the Thông tư 27/2020 primary-school template, its XML and its PDF.

A room: it imports only the foundations (errors, stages, settings, clock, messages'
base types), never the pipeline.
"""
