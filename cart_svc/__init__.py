"""The cart service. Not built yet: it runs, registers and reports health, and its RPCs answer UNIMPLEMENTED."""
