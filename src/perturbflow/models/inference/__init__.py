"""Predictions from control cells: on a split, on any AnnData, per plate; genes in and out."""
