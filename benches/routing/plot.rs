//! A dependency-free SVG of TTFT distributions (CDFs, log-scale time) per policy, one panel per workload.

const COLORS: &[&str] = &["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];

/// One panel: a title and, per policy, its TTFTs in ms, sorted.
pub(crate) type Panel = (String, Vec<(String, Vec<f64>)>);

pub(crate) fn ttft_cdfs(panels: &[Panel]) -> String {
    let (w, h, pad) = (560.0, 320.0, 50.0);
    let total_h = h * panels.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, (title, series)) in panels.iter().enumerate() {
        let top = p as f64 * h;
        let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|x| *x > 0.0).collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.1).log10().floor();
        let hi = all.iter().copied().fold(0.0f64, f64::max).max(1.0).log10().ceil().max(lo + 1.0);
        let x = |ms: f64| pad + (ms.max(0.1).log10() - lo) / (hi - lo) * (w - 2.0 * pad);
        let y = |q: f64| top + h - pad - q * (h - 2.0 * pad);
        svg.push_str(&format!("<text x=\"{}\" y=\"{}\" font-size=\"13\">{title}: TTFT CDF</text>\n", pad, top + 20.0));
        svg.push_str(&format!(
            "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n",
            y(0.0), w - pad, y(0.0), y(0.0), y(1.0)
        ));
        let mut d = lo as i32;
        while f64::from(d) <= hi {
            let ms = 10f64.powi(d);
            let label = if ms >= 1000.0 { format!("{} s", ms / 1000.0) } else { format!("{ms} ms") };
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
                x(ms),
                y(0.0) + 14.0
            ));
            d += 1;
        }
        for q in [0.5, 0.9, 1.0] {
            svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{q}</text>\n", pad - 4.0, y(q) + 4.0));
            svg.push_str(&format!(
                "<line x1=\"{pad}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#ddd\"/>\n",
                y(q),
                w - pad
            ));
        }
        for (i, (name, v)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(k, ms)| format!("{:.1},{:.1}", x(*ms), y((k + 1) as f64 / v.len() as f64)))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                pts.join(" ")
            ));
            let ly = top + 40.0 + i as f64 * 14.0;
            svg.push_str(&format!(
                "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{2}\" y=\"{3}\">{name}</text>\n",
                pad + 10.0,
                pad + 30.0,
                pad + 34.0,
                ly + 4.0
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}
