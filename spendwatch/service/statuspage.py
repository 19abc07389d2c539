"""The status page served at ``GET /``."""

PAGE = b"<!doctype html><title>spendwatch</title>"
