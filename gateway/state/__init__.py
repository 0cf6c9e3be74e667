"""State stores shared by gateway replicas."""
