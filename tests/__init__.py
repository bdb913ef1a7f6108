"""The test suite. Shared scenario modules get pytest's assertion rewriting, like test modules do."""

import pytest

pytest.register_assert_rewrite("tests.conformance", "tests.helpers")
