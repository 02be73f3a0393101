"""Rollout plans: a wave's ordered phases that advance on evidence (gates) or approval and halt
on trouble, plan templates, and a forecast of completion.

    phases      a phase's settings as every door gives them: parsing, checks, labels
    decisions   what a plan decided, in its history and the audit log, and the webhook
    selectors   a plan, its phases, the devices a phase staged
    gates       a phase's counts and gates: the evidence a plan advances or halts on
    forecast    when a plan should finish; everything its timeline shows
    services    writes: set, start, evaluate, approve, pause, resume, cancel
    templates   plan templates: save, delete, apply
"""
