"""NF placement and orchestration (paper section 7.1, appendix A)."""
