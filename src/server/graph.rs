//! The process graph as SVG for the console's cockpit: left-to-right longest-path layers, each
//! node a box (`data-node` = its YAML id) with its English and Chinese names and, where tokens
//! wait, a badge with their count.

use std::collections::HashMap;
use std::fmt::Write;

use petgraph::visit::EdgeRef;

use crate::def::{NodeKind, ProcessDef};

const W: f64 = 150.0;
const H: f64 = 46.0;
const GAP_X: f64 = 40.0;
const GAP_Y: f64 = 18.0;
const MARGIN: f64 = 16.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// The graph of `def`; `counts` gives, by node YAML id, the tokens waiting there (drawn as a
/// badge), `current` the nodes to outline (one instance's position).
pub fn graph_svg(def: &ProcessDef, counts: &HashMap<String, usize>, current: &[String]) -> String {
    let g = def.graph();
    let order = petgraph::algo::toposort(g, None).unwrap_or_else(|_| g.node_indices().collect());
    let mut layer: HashMap<petgraph::graph::NodeIndex, usize> = HashMap::new();
    for &ix in &order {
        let l = g
            .edges_directed(ix, petgraph::Direction::Incoming)
            .filter_map(|e| layer.get(&e.source()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        layer.insert(ix, l);
    }
    let layers = layer.values().copied().max().map_or(0, |m| m + 1);
    let mut rows = vec![0usize; layers];
    let mut pos: HashMap<petgraph::graph::NodeIndex, (f64, f64)> = HashMap::new();
    for &ix in &order {
        let l = layer[&ix];
        let r = rows[l];
        rows[l] += 1;
        pos.insert(
            ix,
            (
                MARGIN + l as f64 * (W + GAP_X),
                MARGIN + r as f64 * (H + GAP_Y),
            ),
        );
    }
    let max_rows = rows.iter().copied().max().unwrap_or(1).max(1);
    let width = MARGIN * 2.0 + layers as f64 * (W + GAP_X);
    let height = MARGIN * 2.0 + max_rows as f64 * (H + GAP_Y);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="procgraph" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"##
    );
    out.push_str(r##"<defs><marker id="pg-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker></defs>"##);
    out.push('\n');
    for e in g.edge_references() {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&e.source()), pos.get(&e.target()))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-width="1.2" marker-end="url(#pg-arrow)"/>"##,
            x1 + W,
            y1 + H / 2.0,
            x2,
            y2 + H / 2.0
        );
    }
    for &ix in &order {
        let node = def.node(g[ix]);
        let (x, y) = pos[&ix];
        let id = node.id();
        let count = counts.get(id).copied().unwrap_or(0);
        let here = current.iter().any(|c| c == id);
        let (fill, rx) = match node.kind() {
            NodeKind::UserTask => ("#eaf2fb", 6),
            NodeKind::ServiceTask => ("#f4ecf7", 6),
            NodeKind::Start | NodeKind::End => ("#eafaf1", 22),
            _ => ("#fdf2e9", 2),
        };
        let stroke = if here { "#1f6feb" } else { "#888" };
        let sw = if here { 3.0 } else { 1.0 };
        let title = node.name().unwrap_or(id);
        let _ = writeln!(
            out,
            r##"<g class="node{}" data-node="{}" data-count="{count}"><title>{} ({})</title><rect x="{x:.1}" y="{y:.1}" width="{W}" height="{H}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>"##,
            if here { " current" } else { "" },
            esc(id),
            esc(title),
            esc(node.kind().as_str())
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            x + W / 2.0,
            y + 18.0,
            esc(&short(node.name_zh().unwrap_or(id), 12))
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#555" text-anchor="middle">{}</text>"##,
            x + W / 2.0,
            y + 34.0,
            esc(&short(id, 24))
        );
        if count > 0 {
            let _ = writeln!(
                out,
                r##"<g class="badge"><circle cx="{:.1}" cy="{:.1}" r="10" fill="#d9480f"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#fff" text-anchor="middle">{count}</text></g>"##,
                x + W - 4.0,
                y + 4.0,
                x + W - 4.0,
                y + 8.0
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}
