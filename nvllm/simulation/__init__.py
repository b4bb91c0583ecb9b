"""Simulated serving (forward=simulated): what a step's forward pass would cost, from its shape.

cost.py holds the step's shape and the cost models (a profile fitted to measured steps, or a
roofline of the model's shape on a hardware entry); hardware.py holds the hardware table. The
strategy that uses them is nvllm/forward/simulated.py; profiles are measured by
`python -m nvllm.tools.profile`. docs/simulation.md explains the model and its accuracy."""
