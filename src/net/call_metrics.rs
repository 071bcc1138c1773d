//! Duration histograms of the calls to external systems (PVE, NetBox, SSH): the label set
//! they share, their buckets, and the recorder a client is given. Label values other than
//! the cluster are `&'static str` from fixed sets, so a path, a node name, a URL or an
//! error message can never become one.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Outcome label of a call that succeeded.
pub const SUCCESS: &str = "success";

/// Upper bounds of the duration buckets, in seconds: 5 ms to 60 s.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Labels of one call's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallDurationLabels {
    /// `namespace/name` of the ProxmoxCluster the call was made for.
    pub cluster: String,
    /// What was asked, from the calling component's fixed set.
    pub operation: &'static str,
    /// [`SUCCESS`] or the stable error kind of the failure.
    pub outcome: &'static str,
}

/// Durations of the calls to one external system, a histogram per label set.
#[derive(Clone, Debug)]
pub struct CallDurations(Family<CallDurationLabels, Histogram>);

impl CallDurations {
    /// Creates the family and registers it in `registry` as `name`.
    pub fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(name, help, family.clone());
        Self(family)
    }

    /// A recorder of the calls made for `cluster`.
    pub fn recorder(&self, cluster: &str) -> CallRecorder {
        CallRecorder {
            target: Some((self.clone(), cluster.to_string())),
        }
    }
}

/// Records the calls one client makes for one cluster. The default records nothing: the
/// `sync` command has no registry.
#[derive(Clone, Debug, Default)]
pub struct CallRecorder {
    target: Option<(CallDurations, String)>,
}

impl CallRecorder {
    /// Records one call of `operation` that ended with `outcome` after `elapsed`.
    pub fn observe(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        if let Some((durations, cluster)) = &self.target {
            durations
                .0
                .get_or_create(&CallDurationLabels {
                    cluster: cluster.clone(),
                    operation,
                    outcome,
                })
                .observe(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_recorder_observes_into_its_family_and_the_default_records_nothing() {
        let mut registry = Registry::default();
        let durations = CallDurations::register(&mut registry, "x_duration_seconds", "test");
        CallRecorder::default().observe("list", SUCCESS, Duration::from_millis(3));
        assert!(!render(&registry).contains("x_duration_seconds_count{"));
        let recorder = durations.recorder("infra/lab");
        recorder.observe("list", SUCCESS, Duration::from_millis(3));
        recorder.observe("list", SUCCESS, Duration::from_secs(2));
        let text = render(&registry);
        for line in [
            r#"x_duration_seconds_count{cluster="infra/lab",operation="list",outcome="success"} 2"#,
            r#"x_duration_seconds_bucket{le="0.005",cluster="infra/lab",operation="list",outcome="success"} 1"#,
            r#"x_duration_seconds_bucket{le="2.5",cluster="infra/lab",operation="list",outcome="success"} 2"#,
            r#"x_duration_seconds_bucket{le="60.0",cluster="infra/lab",operation="list",outcome="success"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
