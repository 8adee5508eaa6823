from pipeline.ingress import replies
