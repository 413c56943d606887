"""A flow drawn as SVG: members in columns by depth (what they wait for is to their left),
an arrow for each edge; the page colours each node by its member's state."""

from __future__ import annotations

from dataclasses import dataclass

from ff_celery.web.reads import FlowMember

NODE_WIDTH, NODE_HEIGHT = 170, 44
COLUMN_GAP, ROW_GAP, MARGIN = 60, 22, 16


@dataclass
class Node:
    member: FlowMember
    x: int
    y: int


@dataclass
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass
class Drawing:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def draw(members: list[FlowMember]) -> Drawing:
    """Where each member's box and each edge's arrow go."""
    nodes = {
        member.execution_id: Node(
            member,
            MARGIN + member.depth * (NODE_WIDTH + COLUMN_GAP),
            MARGIN + member.row * (NODE_HEIGHT + ROW_GAP),
        )
        for member in members
    }
    edges = [
        Edge(
            nodes[up].x + NODE_WIDTH,
            nodes[up].y + NODE_HEIGHT // 2,
            node.x,
            node.y + NODE_HEIGHT // 2,
        )
        for node in nodes.values()
        for up in node.member.waits_for
        if up in nodes
    ]
    width = max((n.x + NODE_WIDTH for n in nodes.values()), default=0) + MARGIN
    height = max((n.y + NODE_HEIGHT for n in nodes.values()), default=0) + MARGIN
    return Drawing(width=width, height=height, nodes=list(nodes.values()), edges=edges)
