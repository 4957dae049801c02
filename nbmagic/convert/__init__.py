"""Convert notebooks written for other tools into nbmagic notebooks."""
