"""What runs inside a step, on this machine or in a cluster pod: step execution, marshalling, the component entry.

Standard library plus the formats' own libraries only: nothing here imports the rest of nbmagic.
"""
