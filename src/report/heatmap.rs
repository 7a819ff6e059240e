//! The bottleneck picture: a process graph as a self-contained SVG, each user-task node
//! coloured by a [`HeatMetric`] and labelled with its figures.
//!
//! The layout is hand-placed layers of the DAG, Sugiyama style: longest-path layers from the
//! sources, a dummy vertex wherever a flow crosses a layer, barycentre sweeps (keeping the order
//! with the fewest crossings), then x positions that sit each vertex as close to the mean of its
//! neighbours as the spacing allows (an isotonic regression per layer). Flows are cubic curves
//! through their dummies; timeout routes are dashed.

use std::fmt::Write;
use std::str::FromStr;

use super::{NodeFigures, Report, human, is_wide};
use crate::def::{NodeKind, ProcessDef};

/// What colours the nodes of a heatmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeatMetric {
    /// The mean waiting time ([`NodeFigures::waiting`]), from 0 (green) to the process's
    /// slowest node (red). This is the default.
    #[default]
    MeanWait,
    /// Breaches per opened task, from 0% (green) to 100% (red).
    BreachRate,
    /// Rework per opened task: the share of the node's tasks that a send back reopened
    /// ([`NodeFigures::reworks`] / [`NodeFigures::opened`]), from 0% (green) to 100% (red).
    ReworkRate,
}

/// An unknown metric name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric '{0}': use mean-wait, breach-rate or rework-rate")]
pub struct UnknownMetric(pub String);

impl FromStr for HeatMetric {
    type Err = UnknownMetric;

    /// `mean-wait`, `breach-rate` or `rework-rate`.
    fn from_str(s: &str) -> Result<HeatMetric, UnknownMetric> {
        match s {
            "mean-wait" => Ok(HeatMetric::MeanWait),
            "breach-rate" => Ok(HeatMetric::BreachRate),
            "rework-rate" => Ok(HeatMetric::ReworkRate),
            other => Err(UnknownMetric(other.to_owned())),
        }
    }
}

impl HeatMetric {
    /// The name [`FromStr`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            HeatMetric::MeanWait => "mean-wait",
            HeatMetric::BreachRate => "breach-rate",
            HeatMetric::ReworkRate => "rework-rate",
        }
    }

    /// The node's value: seconds of mean wait, or a rate from 0 to 1.
    fn value(self, f: &NodeFigures) -> Option<f64> {
        match self {
            HeatMetric::MeanWait => f.waiting.mean.map(|d| d.num_milliseconds() as f64 / 1e3),
            HeatMetric::BreachRate => (f.opened > 0).then(|| f.breaches as f64 / f.opened as f64),
            HeatMetric::ReworkRate => (f.opened > 0).then(|| f.reworks as f64 / f.opened as f64),
        }
    }
}

const FONT: &str = "'Noto Sans CJK SC','Noto Sans SC','Source Han Sans SC','PingFang SC',\
'Hiragino Sans GB','Microsoft YaHei','WenQuanYi Micro Hei','WenQuanYi Zen Hei',\
'Helvetica Neue',Arial,sans-serif";
const MONO: &str = "'DejaVu Sans Mono',Menlo,Consolas,monospace";
const MARGIN: f64 = 30.0;
const TOP: f64 = 120.0;
const LAYER_GAP: f64 = 64.0;
const NODE_GAP: f64 = 36.0;
const DUMMY_W: f64 = 14.0;
const MAX_TASK_W: f64 = 300.0;

/// A vertex of the layered graph: a node of the definition, or a dummy on a long flow.
struct Vertex {
    node: Option<usize>,
    layer: usize,
    w: f64,
    h: f64,
    x: f64,
    y: f64,
}

/// A flow, as the chain of vertices it passes.
struct Flow {
    chain: Vec<usize>,
    timeout: bool,
    label: Option<String>,
}

pub(super) fn svg(report: &Report, def: &ProcessDef, metric: HeatMetric) -> String {
    let process = &def.key().id;
    let figures: Vec<Option<&NodeFigures>> = def
        .nodes()
        .map(|(_, n)| report.node(process, n.id()))
        .collect();
    let values: Vec<Option<f64>> = figures
        .iter()
        .map(|f| f.and_then(|f| metric.value(f)))
        .collect();
    let max = values.iter().flatten().fold(0.0_f64, |a, b| a.max(*b));
    let min = values
        .iter()
        .flatten()
        .fold(f64::INFINITY, |a, b| a.min(*b))
        .min(max);
    // The colour is the node's rank among the distinct values (green the best, red the worst),
    // so neighbours in value are apart in colour; the worst node (the highest value, when it is
    // above 0) also gets a heavy outline and a mark.
    let mut distinct: Vec<f64> = values.iter().flatten().copied().collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    let rank = |x: f64| -> f64 {
        let i = distinct.partition_point(|d| *d < x);
        if distinct.len() < 2 {
            if x > 0.0 { 1.0 } else { 0.0 }
        } else {
            i as f64 / (distinct.len() - 1) as f64
        }
    };

    let labels: Vec<Label> = def
        .nodes()
        .enumerate()
        .map(|(i, (_, n))| Label::of(n, figures[i]))
        .collect();
    let (mut verts, flows) = build(def, &labels);
    let layers = order(&mut verts, &flows);
    place(&mut verts, &layers, &flows);

    // The drawing's extent (side labels are inside `w`).
    let left = verts
        .iter()
        .map(|v| v.x - v.w / 2.0)
        .fold(f64::INFINITY, f64::min);
    let shift = MARGIN - left;
    for v in &mut verts {
        v.x += shift;
    }
    let right = verts
        .iter()
        .map(|v| v.x + v.w / 2.0)
        .fold(0.0_f64, f64::max);
    // The flows, and where their labels go.
    let mut flow_svg = String::from("<g fill=\"none\" stroke-width=\"1.4\">\n");
    // Flows between the same two nodes (a timeout route to the normal next) sit side by side.
    let mut seen: Vec<(usize, usize)> = Vec::new();
    let mut route_labels = Vec::new();
    for flow in &flows {
        let ends = (flow.chain[0], flow.chain[flow.chain.len() - 1]);
        let twins = seen.iter().filter(|e| **e == ends).count();
        seen.push(ends);
        route_labels.extend(draw_flow(&mut flow_svg, &verts, flow, 12.0 * twins as f64));
    }
    flow_svg.push_str("</g>\n");
    place_labels(&mut route_labels, &verts);
    let bottom = verts
        .iter()
        .map(|v| v.y + v.h / 2.0)
        .chain(route_labels.iter().map(|l| l.rect()[3]))
        .fold(TOP, f64::max);
    let right = route_labels
        .iter()
        .map(|l| l.rect()[2])
        .fold(right, f64::max);
    let width = (right + MARGIN).max(560.0).ceil();
    let height = (bottom + MARGIN).ceil();

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{FONT}">"#
    );
    let _ = writeln!(
        out,
        r##"<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>
<marker id="arrow-timeout" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker>
<linearGradient id="scale" x1="0" x2="1" y1="0" y2="0"><stop offset="0" stop-color="{}"/><stop offset="0.5" stop-color="{}"/><stop offset="1" stop-color="{}"/></linearGradient>
</defs>"##,
        fill(0.0),
        fill(0.5),
        fill(1.0)
    );
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );

    // Title and legend.
    let title = match def.name_zh() {
        Some(zh) => format!("{} / {zh}", def.name()),
        None => def.name().to_owned(),
    };
    let instances = report.process(process).map_or(0, |p| p.started);
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="34" font-size="20" font-weight="bold" fill="#222">{}</text>"##,
        esc(&title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="56" font-size="12" fill="#555">{} · {} instance(s) · colour: {}, ranked among the nodes; the worst outlined ▲</text>"##,
        esc(&def.key().to_string()),
        instances,
        match metric {
            HeatMetric::MeanWait => "mean waiting time (creation to claim)",
            HeatMetric::BreachRate => "breach rate (deadlines fired per task)",
            HeatMetric::ReworkRate => "rework rate (tasks reopened by a send back)",
        }
    );
    let show = |x: f64| match metric {
        HeatMetric::MeanWait => human(chrono::Duration::milliseconds((x * 1e3) as i64)),
        HeatMetric::BreachRate | HeatMetric::ReworkRate => format!("{:.0}%", x * 100.0),
    };
    let (lo, hi) = if distinct.is_empty() {
        ("-".to_owned(), "-".to_owned())
    } else {
        (
            format!("best {}", show(min)),
            format!("worst {}", show(max)),
        )
    };
    let _ = writeln!(
        out,
        r##"<g font-size="11" fill="#333"><rect x="{MARGIN}" y="70" width="180" height="12" fill="url(#scale)" stroke="#888" stroke-width="0.5"/><text x="{MARGIN}" y="96">{}</text><text x="{}" y="96" text-anchor="end">{}</text><rect x="{}" y="70" width="18" height="12" fill="#e6e6e6" stroke="#999"/><text x="{}" y="80">no data</text><line x1="{}" y1="76" x2="{}" y2="76" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{}" y="80">timeout route</text></g>"##,
        esc(&lo),
        MARGIN + 180.0,
        esc(&hi),
        MARGIN + 200.0,
        MARGIN + 222.0,
        MARGIN + 280.0,
        MARGIN + 318.0,
        MARGIN + 324.0,
    );

    // Flows first, under the nodes.
    out.push_str(&flow_svg);

    let kinds: Vec<NodeKind> = def.nodes().map(|(_, n)| n.kind()).collect();
    for v in &verts {
        let Some(i) = v.node else { continue };
        let value = values[i].map(rank);
        let worst = max > 0.0 && values[i] == Some(max);
        draw_node(&mut out, v, kinds[i], &labels[i], value, worst);
    }
    // Route labels last, over the flows, where `place_labels` put them.
    for label in &route_labels {
        draw_label(&mut out, label);
    }
    out.push_str("</svg>\n");
    out
}

/// The text of a node.
struct Label {
    /// The Chinese name when there is one, else the name, else the id.
    title: String,
    /// The id (for user and service tasks).
    sub: String,
    /// Figure lines (user tasks).
    lines: Vec<String>,
    /// The full description, for the tooltip.
    tooltip: String,
}

impl Label {
    fn of(node: &crate::def::Node, figures: Option<&NodeFigures>) -> Label {
        let title = node
            .name_zh()
            .or(node.name())
            .unwrap_or(node.id())
            .to_owned();
        let mut tooltip = node.id().to_owned();
        for name in [node.name(), node.name_zh()].into_iter().flatten() {
            tooltip.push_str(" · ");
            tooltip.push_str(name);
        }
        let mut lines = Vec::new();
        // The owning roles: who does the work (R) and who answers for it (A).
        if let Some(raci) = node.raci() {
            let responsible: Vec<&str> = raci.responsible().iter().map(|r| r.as_str()).collect();
            let roles = format!("R {} · A {}", responsible.join(", "), raci.accountable());
            let _ = write!(tooltip, "\nroles: {roles}");
            lines.push(roles);
        }
        if node.kind() == NodeKind::UserTask {
            match figures.filter(|f| f.opened > 0) {
                None => lines.push("no tasks".to_owned()),
                Some(f) => {
                    let d = |d: Option<chrono::Duration>| d.map_or("-".to_owned(), human);
                    lines.push(format!(
                        "wait μ {} · p50 {} · p90 {}",
                        d(f.waiting.mean),
                        d(f.waiting.p50),
                        d(f.waiting.p90)
                    ));
                    let rate = 100.0 * f.breaches as f64 / f.opened as f64;
                    lines.push(format!(
                        "tasks {} · breached {} ({rate:.0}%)",
                        f.opened, f.breaches
                    ));
                    if f.timeouts > 0 {
                        lines.push(format!("timed out {}", f.timeouts));
                    }
                    if f.reworks > 0 {
                        lines.push(format!("sent back here {}", f.reworks));
                    }
                    let _ = write!(
                        tooltip,
                        "\ntasks {} (completed {}, open {}), timeouts {}, breaches {}, denials {}, reworks {}\nwaiting p50 {} p90 {} mean {}\nhandling p50 {} p90 {}",
                        f.opened,
                        f.completed,
                        f.open,
                        f.timeouts,
                        f.breaches,
                        f.denials,
                        f.reworks,
                        d(f.waiting.p50),
                        d(f.waiting.p90),
                        d(f.waiting.mean),
                        d(f.handling.p50),
                        d(f.handling.p90)
                    );
                }
            }
        }
        // Multi-instance items and loop runs, on any task.
        if let Some(f) = figures {
            if f.items > 0 {
                lines.push(format!("items {}", f.items));
                let _ = write!(tooltip, "\nitems completed {}", f.items);
            }
            if f.repeated > 0 {
                lines.push(format!("ran again {}", f.repeated));
                let _ = write!(tooltip, "\nran again {} times (repeat)", f.repeated);
            }
        }
        let sub = match node.kind() {
            NodeKind::UserTask | NodeKind::ServiceTask if title != node.id() => {
                node.id().to_owned()
            }
            _ => String::new(),
        };
        Label {
            title,
            sub,
            lines,
            tooltip,
        }
    }
}

/// The width `s` takes at `size` px, roughly: wide characters one em, others 0.62 em (CJK
/// fonts' Latin letters are wide).
fn text_width(s: &str, size: f64) -> f64 {
    s.chars()
        .map(|c| if is_wide(c) { size } else { size * 0.62 })
        .sum()
}

/// `s` cut with an ellipsis to fit `width` px at `size`.
fn fit(s: &str, size: f64, width: f64) -> String {
    if text_width(s, size) <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    for c in s.chars() {
        if text_width(&out, size) + text_width(&c.to_string(), size) + size > width {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// The size of a node's shape.
fn shape_size(kind: NodeKind, label: &Label) -> (f64, f64) {
    match kind {
        NodeKind::Start | NodeKind::End => (32.0, 32.0),
        NodeKind::Exclusive | NodeKind::Parallel | NodeKind::Inclusive => (40.0, 40.0),
        NodeKind::Timer | NodeKind::Catch | NodeKind::Race => (40.0, 40.0),
        NodeKind::ServiceTask => {
            let w = text_width(&label.title, 12.0).max(text_width(&label.sub, 10.0)) + 24.0;
            (w.clamp(120.0, MAX_TASK_W), 44.0)
        }
        _ => {
            let w = std::iter::once(text_width(&label.title, 13.0))
                .chain(std::iter::once(text_width(&label.sub, 10.0)))
                .chain(label.lines.iter().map(|l| text_width(l, 10.5)))
                .fold(0.0, f64::max)
                + 24.0;
            (
                w.clamp(170.0, MAX_TASK_W),
                40.0 + 15.0 * label.lines.len() as f64,
            )
        }
    }
}

/// Small shapes carry their name beside them, on the right.
fn has_side_label(kind: NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::Start
            | NodeKind::End
            | NodeKind::Exclusive
            | NodeKind::Parallel
            | NodeKind::Inclusive
            | NodeKind::Timer
            | NodeKind::Catch
            | NodeKind::Race
    )
}

/// The layered graph: vertices with their layers (dummies included) and flows.
fn build(def: &ProcessDef, labels: &[Label]) -> (Vec<Vertex>, Vec<Flow>) {
    let nodes: Vec<&crate::def::Node> = def.nodes().map(|(_, n)| n).collect();
    let n = nodes.len();
    // Edges with their timeout flag and label.
    let mut edges: Vec<(usize, usize, bool, Option<String>)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match node.kind() {
            // An inclusive join alone has no routes: its one flow is drawn as any other.
            NodeKind::Exclusive | NodeKind::Inclusive if !node.routes().is_empty() => {
                for (cond, to) in node.routes() {
                    let label = cond.map_or_else(|| "default".to_owned(), str::to_owned);
                    edges.push((i, to.index(), false, Some(label)));
                }
            }
            // A user task's second flow is its timeout route; its boundary events' follow.
            NodeKind::UserTask => {
                for (k, to) in node.next().iter().enumerate() {
                    let label = match node.boundary.iter().find(|b| b.flow as usize == k) {
                        Some(b) => Some(b.label()),
                        None => (k > 0).then(|| "timeout".to_owned()),
                    };
                    edges.push((i, to.index(), k > 0, label));
                }
            }
            _ => {
                for to in node.next() {
                    edges.push((i, to.index(), false, None));
                }
            }
        }
    }
    // Longest-path layers, in topological order (a definition is a DAG).
    let mut indegree = vec![0usize; n];
    for e in &edges {
        indegree[e.1] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).rev().filter(|&i| indegree[i] == 0).collect();
    while let Some(u) = ready.pop() {
        for e in edges.iter().filter(|e| e.0 == u) {
            layer[e.1] = layer[e.1].max(layer[u] + 1);
            indegree[e.1] -= 1;
            if indegree[e.1] == 0 {
                ready.push(e.1);
            }
        }
    }
    let mut verts: Vec<Vertex> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (mut w, h) = shape_size(node.kind(), &labels[i]);
            if has_side_label(node.kind()) {
                // Room for the name on the right, reserved on both sides to keep it centred.
                w += 2.0 * (8.0 + text_width(&labels[i].title, 11.0).min(200.0));
            }
            Vertex {
                node: Some(i),
                layer: layer[i],
                w,
                h,
                x: 0.0,
                y: 0.0,
            }
        })
        .collect();
    let mut flows = Vec::new();
    for (from, to, timeout, label) in edges {
        let mut chain = vec![from];
        // A flow back up (not in a DAG, but harmless) or within a layer has no dummies.
        for l in layer[from] + 1..layer[to] {
            verts.push(Vertex {
                node: None,
                layer: l,
                w: DUMMY_W,
                h: 0.0,
                x: 0.0,
                y: 0.0,
            });
            chain.push(verts.len() - 1);
        }
        chain.push(to);
        flows.push(Flow {
            chain,
            timeout,
            label,
        });
    }
    (verts, flows)
}

/// Orders each layer to reduce crossings; returns the layers, left to right.
fn order(verts: &mut [Vertex], flows: &[Flow]) -> Vec<Vec<usize>> {
    let depth = verts.iter().map(|v| v.layer).max().unwrap_or(0) + 1;
    // Start from the order a depth-first walk along the flows meets the vertices (the first flow
    // on the left).
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); verts.len()];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); verts.len()];
    for f in flows {
        for w in f.chain.windows(2) {
            succ[w[0]].push(w[1]);
            pred[w[1]].push(w[0]);
        }
    }
    let mut seen = vec![false; verts.len()];
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    let roots: Vec<usize> = (0..verts.len()).filter(|&v| pred[v].is_empty()).collect();
    for root in roots.into_iter().chain(0..verts.len()) {
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut seen[v], true) {
                continue;
            }
            layers[verts[v].layer].push(v);
            stack.extend(succ[v].iter().rev());
        }
    }
    let mut best = layers.clone();
    let mut best_crossings = crossings(&layers, &succ);
    for round in 0..8 {
        let down = round % 2 == 0;
        let range: Vec<usize> = if down {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in range {
            let (adjacent, fixed) = if down {
                (&pred, &layers[l - 1])
            } else {
                (&succ, &layers[l + 1])
            };
            let pos = |v: usize| fixed.iter().position(|&x| x == v).unwrap_or(0) as f64;
            let mut keyed: Vec<(f64, usize)> = layers[l]
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ns = &adjacent[v];
                    let bary = if ns.is_empty() {
                        i as f64
                    } else {
                        ns.iter().map(|&n| pos(n)).sum::<f64>() / ns.len() as f64
                    };
                    (bary, v)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            layers[l] = keyed.into_iter().map(|(_, v)| v).collect();
        }
        let c = crossings(&layers, &succ);
        if c < best_crossings {
            best_crossings = c;
            best = layers.clone();
        }
    }
    best
}

/// The number of crossing flow segments between adjacent layers.
fn crossings(layers: &[Vec<usize>], succ: &[Vec<usize>]) -> usize {
    let mut total = 0;
    for pair in layers.windows(2) {
        let pos = |layer: &Vec<usize>, v: usize| layer.iter().position(|&x| x == v);
        let mut segs: Vec<(usize, usize)> = Vec::new();
        for (i, &u) in pair[0].iter().enumerate() {
            for &v in &succ[u] {
                if let Some(j) = pos(&pair[1], v) {
                    segs.push((i, j));
                }
            }
        }
        for (a, s) in segs.iter().enumerate() {
            for t in &segs[a + 1..] {
                if (s.0 < t.0 && s.1 > t.1) || (s.0 > t.0 && s.1 < t.1) {
                    total += 1;
                }
            }
        }
    }
    total
}

/// Sets x and y: layers top down, each vertex as near the mean x of its neighbours as the
/// spacing allows.
fn place(verts: &mut [Vertex], layers: &[Vec<usize>], flows: &[Flow]) {
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); verts.len()];
    for f in flows {
        for w in f.chain.windows(2) {
            neighbours[w[0]].push(w[1]);
            neighbours[w[1]].push(w[0]);
        }
    }
    let gap = |a: &Vertex, b: &Vertex| {
        (a.w + b.w) / 2.0
            + if a.node.is_none() || b.node.is_none() {
                NODE_GAP / 2.0
            } else {
                NODE_GAP
            }
    };
    // Packed and centred on 0.
    for layer in layers {
        let mut x = 0.0;
        for (k, &v) in layer.iter().enumerate() {
            if k > 0 {
                x += gap(&verts[layer[k - 1]], &verts[v]);
            }
            verts[v].x = x;
        }
        for &v in layer {
            verts[v].x -= x / 2.0;
        }
    }
    for round in 0..12 {
        let down = round % 2 == 0;
        let seq: Vec<&Vec<usize>> = if down {
            layers.iter().collect()
        } else {
            layers.iter().rev().collect()
        };
        for layer in seq {
            let want: Vec<f64> = layer
                .iter()
                .map(|&v| {
                    let ns = &neighbours[v];
                    if ns.is_empty() {
                        verts[v].x
                    } else {
                        ns.iter().map(|&n| verts[n].x).sum::<f64>() / ns.len() as f64
                    }
                })
                .collect();
            // x[k+1] - x[k] >= gap[k]: with offsets o[k] (the packed positions), y = x - o must
            // not decrease; the y nearest to want - o is the isotonic regression (pool adjacent
            // violators).
            let mut offsets = vec![0.0; layer.len()];
            for k in 1..layer.len() {
                offsets[k] = offsets[k - 1] + gap(&verts[layer[k - 1]], &verts[layer[k]]);
            }
            let mut blocks: Vec<(f64, usize)> = Vec::new();
            for k in 0..layer.len() {
                blocks.push((want[k] - offsets[k], 1));
                while blocks.len() > 1 {
                    let (s1, n1) = blocks[blocks.len() - 1];
                    let (s0, n0) = blocks[blocks.len() - 2];
                    if s0 / n0 as f64 > s1 / n1 as f64 {
                        blocks.pop();
                        let last = blocks.len() - 1;
                        blocks[last] = (s0 + s1, n0 + n1);
                    } else {
                        break;
                    }
                }
            }
            let mut k = 0;
            for (sum, count) in blocks {
                let y = sum / count as f64;
                for _ in 0..count {
                    verts[layer[k]].x = y + offsets[k];
                    k += 1;
                }
            }
        }
    }
    let mut y = TOP;
    for layer in layers {
        let h = layer.iter().map(|&v| verts[v].h).fold(0.0, f64::max);
        for &v in layer {
            verts[v].y = y + h / 2.0;
            if verts[v].node.is_none() {
                verts[v].h = h;
            }
        }
        y += h + LAYER_GAP;
    }
}

/// Draws a flow, `offset` px right of the vertices' centres.
/// Returns its label, when it has one, to be placed after the nodes ([`place_labels`]).
fn draw_flow(out: &mut String, verts: &[Vertex], flow: &Flow, offset: f64) -> Option<RouteLabel> {
    let (colour, marker, dash) = if flow.timeout {
        ("#c0392b", "arrow-timeout", r#" stroke-dasharray="6 4""#)
    } else {
        ("#555", "arrow", "")
    };
    let first = &verts[flow.chain[0]];
    let (mut x, mut y) = (first.x + offset, first.y + first.h / 2.0);
    let mut d = format!("M{x:.1},{y:.1}");
    for (k, &v) in flow.chain.iter().enumerate().skip(1) {
        let t = &verts[v];
        let (tx, ty) = (t.x + offset, t.y - t.h / 2.0);
        let mid = (y + ty) / 2.0;
        let _ = write!(d, " C{x:.1},{mid:.1} {tx:.1},{mid:.1} {tx:.1},{ty:.1}");
        (x, y) = (tx, ty);
        if k + 1 < flow.chain.len() {
            // Straight through the dummy's layer.
            y = t.y + t.h / 2.0;
            let _ = write!(d, " L{x:.1},{y:.1}");
        }
    }
    let _ = writeln!(
        out,
        r#"<path d="{d}" stroke="{colour}"{dash} marker-end="url(#{marker})"/>"#
    );
    let label = flow.label.as_ref()?;
    let second = &verts[flow.chain[1]];
    let text = fit(label, 10.0, 160.0);
    let w = text_width(&text, 10.0) + 6.0;
    Some(RouteLabel {
        x: first.x + (second.x - first.x) * 0.5 + offset,
        y: first.y + first.h / 2.0 + LAYER_GAP * 0.45,
        w,
        text,
        colour,
    })
}

/// A flow's label: centred at `x`, its baseline at `y`, `w` wide and [`LABEL_H`] high.
struct RouteLabel {
    x: f64,
    y: f64,
    w: f64,
    text: String,
    colour: &'static str,
}

/// The height of a route label's box.
const LABEL_H: f64 = 13.0;

impl RouteLabel {
    /// Its box: left, top, right, bottom.
    fn rect(&self) -> [f64; 4] {
        [
            self.x - self.w / 2.0,
            self.y - 10.0,
            self.x + self.w / 2.0,
            self.y - 10.0 + LABEL_H,
        ]
    }
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// Moves each label, in turn, to the nearest free place: off the nodes and off the labels placed
/// before it. Candidates go down and up in steps of one label height, then sideways by the
/// label's width; the first free one is taken, so no two labels ever overlap (the candidates
/// are unbounded downwards, below every node and label).
fn place_labels(labels: &mut [RouteLabel], verts: &[Vertex]) {
    let mut taken: Vec<[f64; 4]> = verts
        .iter()
        .filter(|v| v.node.is_some())
        .map(|v| {
            [
                v.x - v.w / 2.0,
                v.y - v.h / 2.0,
                v.x + v.w / 2.0,
                v.y + v.h / 2.0,
            ]
        })
        .collect();
    let step = LABEL_H + 1.0;
    for label in labels.iter_mut() {
        let (x0, y0) = (label.x, label.y);
        let mut candidates = Vec::new();
        for k in 0..6 {
            let dy = step * f64::from(k);
            for dx in [0.0, label.w + 4.0, -(label.w + 4.0)] {
                candidates.push((x0 + dx, y0 + dy));
                if k > 0 {
                    candidates.push((x0 + dx, y0 - dy));
                }
            }
        }
        let free = |x: f64, y: f64, w: f64, taken: &[[f64; 4]]| {
            let r = RouteLabel {
                x,
                y,
                w,
                text: String::new(),
                colour: "",
            }
            .rect();
            !taken.iter().any(|t| overlaps(r, *t))
        };
        let found = candidates
            .into_iter()
            .find(|(x, y)| free(*x, *y, label.w, &taken));
        let (x, y) = match found {
            Some(p) => p,
            None => {
                // Below everything taken: always free.
                let bottom = taken.iter().map(|t| t[3]).fold(y0, f64::max);
                (x0, bottom + 11.0)
            }
        };
        label.x = x;
        label.y = y;
        taken.push(label.rect());
    }
}

fn draw_label(out: &mut String, label: &RouteLabel) {
    let [l, t, _, _] = label.rect();
    let _ = writeln!(
        out,
        r##"<rect class="route" x="{l:.1}" y="{t:.1}" width="{:.1}" height="{LABEL_H}" rx="3" fill="#ffffff" fill-opacity="0.85" stroke="none"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{}" text-anchor="middle" stroke="none">{}</text>"##,
        label.w,
        label.x,
        label.y,
        label.colour,
        esc(&label.text)
    );
}

fn draw_node(
    out: &mut String,
    v: &Vertex,
    kind: NodeKind,
    label: &Label,
    value: Option<f64>,
    worst: bool,
) {
    let (x, y) = (v.x, v.y);
    let _ = writeln!(out, "<g><title>{}</title>", esc(&label.tooltip));
    let (sw, sh) = shape_size(kind, label);
    match kind {
        NodeKind::Start | NodeKind::End => {
            let stroke = if kind == NodeKind::End { 3.0 } else { 1.5 };
            let _ = writeln!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="{:.1}" fill="#f4f4f4" stroke="#444" stroke-width="{stroke}"/>"##,
                sw / 2.0
            );
        }
        NodeKind::Exclusive | NodeKind::Parallel | NodeKind::Inclusive | NodeKind::Race => {
            let r = sw / 2.0;
            let mark = match kind {
                NodeKind::Exclusive => "×",
                NodeKind::Inclusive => "○",
                NodeKind::Race => "◇",
                _ => "+",
            };
            let _ = writeln!(
                out,
                r##"<path d="M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} z" fill="#fff8dc" stroke="#8a7a2a" stroke-width="1.5"/><text x="{x:.1}" y="{:.1}" font-size="18" text-anchor="middle" fill="#8a7a2a">{mark}</text>"##,
                y - r,
                x + r,
                y + r,
                x - r,
                y + 6.0
            );
        }
        NodeKind::Timer => {
            let _ = writeln!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="{:.1}" fill="#eef3fb" stroke="#4a6fa5" stroke-width="1.5"/><path d="M{x:.1},{:.1} L{x:.1},{y:.1} L{:.1},{y:.1}" stroke="#4a6fa5" stroke-width="1.5" fill="none"/>"##,
                sw / 2.0,
                y - sw / 2.0 + 8.0,
                x + 8.0
            );
        }
        // A catch: a double circle with an envelope-like mark.
        NodeKind::Catch => {
            let r = sw / 2.0;
            let _ = writeln!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="#eef3fb" stroke="#4a6fa5" stroke-width="1.5"/><circle cx="{x:.1}" cy="{y:.1}" r="{:.1}" fill="none" stroke="#4a6fa5" stroke-width="1"/><text x="{x:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="#4a6fa5">✉</text>"##,
                r - 4.0,
                y + 5.0
            );
        }
        NodeKind::ServiceTask => {
            let (l, t) = (x - sw / 2.0, y - sh / 2.0);
            let _ = writeln!(
                out,
                r##"<rect x="{l:.1}" y="{t:.1}" width="{sw:.1}" height="{sh:.1}" rx="3" fill="#eeeeee" stroke="#777" stroke-width="1.2"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="2" fill="none" stroke="#aaa" stroke-width="0.8"/>"##,
                l + 3.0,
                t + 3.0,
                sw - 6.0,
                sh - 6.0
            );
            let _ = writeln!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#333">{}</text>"##,
                y - 2.0,
                esc(&fit(&label.title, 12.0, sw - 12.0))
            );
            let _ = writeln!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" font-size="10" font-family="{MONO}" text-anchor="middle" fill="#666">{}</text>"##,
                y + 13.0,
                esc(&fit(&label.sub, 10.0, sw - 12.0))
            );
        }
        _ => {
            let (l, t) = (x - sw / 2.0, y - sh / 2.0);
            let (fill_colour, stroke) = match value {
                Some(v) => (fill(v), edge(v)),
                None => ("#e6e6e6".to_owned(), "#999999".to_owned()),
            };
            let _ = writeln!(
                out,
                r##"<rect x="{l:.1}" y="{t:.1}" width="{sw:.1}" height="{sh:.1}" rx="8" fill="{fill_colour}" stroke="{stroke}" stroke-width="1.6"/>"##
            );
            if worst {
                // The worst node: a heavy dark outline around it and a mark at its corner.
                let _ = writeln!(
                    out,
                    r##"<rect class="worst" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="10" fill="none" stroke="#7b0000" stroke-width="4"/><text x="{:.1}" y="{:.1}" font-size="14" fill="#7b0000">▲</text>"##,
                    l - 3.0,
                    t - 3.0,
                    sw + 6.0,
                    sh + 6.0,
                    l + 4.0,
                    t + 15.0
                );
            }
            let inner = sw - 14.0;
            let _ = writeln!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="middle" fill="#1a1a1a">{}</text>"##,
                t + 18.0,
                esc(&fit(&label.title, 13.0, inner))
            );
            if !label.sub.is_empty() {
                let _ = writeln!(
                    out,
                    r##"<text x="{x:.1}" y="{:.1}" font-size="10" font-family="{MONO}" text-anchor="middle" fill="#444">{}</text>"##,
                    t + 31.0,
                    esc(&fit(&label.sub, 10.0, inner))
                );
            }
            for (k, line) in label.lines.iter().enumerate() {
                let _ = writeln!(
                    out,
                    r##"<text x="{x:.1}" y="{:.1}" font-size="10.5" text-anchor="middle" fill="#222">{}</text>"##,
                    t + 47.0 + 15.0 * k as f64,
                    esc(&fit(line, 10.5, inner))
                );
            }
        }
    }
    if has_side_label(kind) {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#444">{}</text>"##,
            x + sw / 2.0 + 6.0,
            y + 4.0,
            esc(&fit(&label.title, 11.0, 200.0))
        );
    }
    out.push_str("</g>\n");
}

/// The fill for `t` from 0 (green) through yellow to 1 (red).
fn fill(t: f64) -> String {
    let hue = 120.0 * (1.0 - t.clamp(0.0, 1.0));
    format!("hsl({hue:.0},70%,78%)")
}

fn edge(t: f64) -> String {
    let hue = 120.0 * (1.0 - t.clamp(0.0, 1.0));
    format!("hsl({hue:.0},55%,35%)")
}

/// Escapes text for XML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("a<b & 'c' \"d\">"),
            "a&lt;b &amp; &apos;c&apos; &quot;d&quot;&gt;"
        );
    }

    #[test]
    fn metric_names() {
        for m in [
            HeatMetric::MeanWait,
            HeatMetric::BreachRate,
            HeatMetric::ReworkRate,
        ] {
            assert_eq!(m.as_str().parse::<HeatMetric>(), Ok(m));
        }
        assert_eq!(
            "p99".parse::<HeatMetric>().unwrap_err().to_string(),
            "unknown metric 'p99': use mean-wait, breach-rate or rework-rate"
        );
    }

    #[test]
    fn fits() {
        assert_eq!(fit("short", 10.0, 100.0), "short");
        assert!(fit("a very long label indeed", 10.0, 60.0).ends_with('…'));
    }
}
