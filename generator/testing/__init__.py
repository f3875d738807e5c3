"""Stand-ins for tests and benchmarks (a scripted backend). Production code never imports this
package (an import-linter contract says so)."""
