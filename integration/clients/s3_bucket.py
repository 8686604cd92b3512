"""Creates the test bucket on an S3-compatible endpoint, or lists its keys.

usage: s3_bucket.py ENDPOINT mkbucket|list

Credentials come from the environment, as pgveil's do.
"""

import sys

import boto3


def main() -> None:
    endpoint, command = sys.argv[1], sys.argv[2]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if command == "mkbucket":
        s3.create_bucket(Bucket="audit")
        return
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="audit")
    for page in pages:
        for item in page.get("Contents", []):
            print(item["Key"])


if __name__ == "__main__":
    main()
