//! Per-call and per-function options, with Ray's meaning.

/// Options of a task or actor: resources, retries and names. Unset fields take the
/// function's defaults, then the runtime's (1 CPU for a task, none for an actor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub(crate) num_cpus: Option<f64>,
    pub(crate) num_gpus: Option<f64>,
    pub(crate) resources: Vec<(String, f64)>,
    pub(crate) max_retries: Option<i32>,
    pub(crate) retry_exceptions: Option<bool>,
    pub(crate) name: Option<String>,
}

/// Ray's default `max_retries` for tasks.
pub const DEFAULT_MAX_RETRIES: i32 = 3;

impl Options {
    /// No options set (a `const fn`: usable in statics).
    pub const fn new() -> Self {
        Options { num_cpus: None, num_gpus: None, resources: Vec::new(), max_retries: None, retry_exceptions: None, name: None }
    }
    /// Logical CPUs the task holds while it runs (default 1 for tasks, 0 for actors).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// GPUs the task holds while it runs (default 0).
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = Some(n);
        self
    }
    /// A custom resource amount (adds to, or replaces, an earlier amount of the same name).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.retain(|(n, _)| n != name);
        self.resources.push((name.into(), amount));
        self
    }
    /// How many times a failed task is run again. With Ray's meaning: retries cover system
    /// failures, and application errors (a panic or `Err`) only when `retry_exceptions` is
    /// set. -1 retries forever. Default 3.
    pub fn max_retries(mut self, n: i32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Retry application errors (panics and `Err`) too, up to `max_retries`.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = Some(yes);
        self
    }
    /// A name: the task's name in errors, or the actor's name for [`crate::Runtime::get_actor`].
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `self` with every field that `o` sets taken from `o`.
    pub(crate) fn merged(&self, o: &Options) -> Options {
        let mut m = self.clone();
        m.num_cpus = o.num_cpus.or(m.num_cpus);
        m.num_gpus = o.num_gpus.or(m.num_gpus);
        for (n, a) in &o.resources {
            m = m.resource(n, *a);
        }
        m.max_retries = o.max_retries.or(m.max_retries);
        m.retry_exceptions = o.retry_exceptions.or(m.retry_exceptions);
        m.name = o.name.clone().or(m.name);
        m
    }

    /// True when no resource field is set (the default class applies).
    pub(crate) fn default_resources(&self) -> bool {
        self.num_cpus.is_none() && self.num_gpus.is_none() && self.resources.is_empty()
    }

    /// The resource request, with `default_cpus` when `num_cpus` is unset.
    pub(crate) fn request(&self, default_cpus: f64) -> Vec<(&str, f64)> {
        let mut r = vec![("CPU", self.num_cpus.unwrap_or(default_cpus)), ("GPU", self.num_gpus.unwrap_or(0.0))];
        r.extend(self.resources.iter().map(|(n, a)| (n.as_str(), *a)));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prefers_the_call_and_keeps_the_rest() {
        let d = Options::new().num_cpus(2.0).resource("ssd", 1.0).max_retries(5);
        let m = d.merged(&Options::new().num_cpus(0.5).resource("ssd", 2.0).name("x"));
        assert_eq!(m.num_cpus, Some(0.5));
        assert_eq!(m.resources, vec![("ssd".to_string(), 2.0)]);
        assert_eq!(m.max_retries, Some(5));
        assert_eq!(m.name.as_deref(), Some("x"));
        assert_eq!(m.request(1.0), vec![("CPU", 0.5), ("GPU", 0.0), ("ssd", 2.0)]);
        assert!(Options::new().default_resources());
    }
}
