//! The host's attachments and systemd's states of their units, read at
//! one moment: what `list` and `is-attached` answer from. wharfd keeps the
//! one read as a change of attachments begins, so that reads made while it
//! is applied (and systemd reloads) answer at once, from the host as the
//! last finished change left it.

use std::collections::{BTreeSet, HashMap};

use super::State;
use super::attachments::{Attachment, Attachments};
use super::ops::{Host, Result};
use super::plan::attached_extensions;
use super::{Error, portabled};
use crate::systemd::UnitState;
use crate::systemd::manager::UnitManager;

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// wharf's attachments.
    pub wharf: Attachments,
    /// portabled's (`portablectl attach`).
    pub portabled: Vec<Attachment>,
    /// The extensions each of wharf's attached units was attached with, by unit.
    pub extensions: HashMap<String, Vec<String>>,
    /// systemd's states of the attached units it has loaded, by unit.
    pub units: HashMap<String, UnitState>,
    /// Unit file states (`enabled`, `static`, ...), by unit.
    pub files: HashMap<String, String>,
}

impl HostView {
    /// Reads the unit directories, then asks systemd for the states of the
    /// units found there (two calls, whatever their number).
    pub async fn read(host: &Host, systemd: &impl UnitManager) -> Result<HostView> {
        let root = host.root.clone();
        let mut view = zruntime::unblock(move || -> Result<HostView> {
            let io = |source| Error::Io { path: root.clone(), source };
            let wharf = Attachments::scan(&root).map_err(io)?;
            let portabled = portabled::scan(&root).map_err(io)?;
            let extensions =
                wharf.0.iter().map(|a| Ok((a.unit.clone(), attached_extensions(&root, a)?))).collect::<Result<_>>()?;
            Ok(HostView { wharf, portabled, extensions, ..HostView::default() })
        })
        .await?;
        let names = view.unit_names();
        // A template is never loaded: asking for it would only cost time.
        let loadable: Vec<String> = names.iter().filter(|n| !n.contains("@.")).cloned().collect();
        view.units = systemd.unit_states(&loadable).await?.into_iter().map(|s| (s.name.clone(), s)).collect();
        view.files = systemd.unit_file_states(&names).await?;
        Ok(view)
    }

    /// Every attached unit, wharf's and portabled's.
    pub fn unit_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.all().map(|a| a.unit.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn all(&self) -> impl Iterator<Item = &Attachment> {
        self.wharf.0.iter().chain(&self.portabled)
    }

    /// The images portabled attached.
    pub fn portabled_images(&self) -> BTreeSet<String> {
        self.portabled.iter().map(|a| a.image.clone()).collect()
    }

    /// The state of every attached image, keyed by image path: that of its
    /// unit furthest along (running, then enabled, then attached).
    pub fn states(&self) -> HashMap<String, State> {
        let mut states: HashMap<String, State> = HashMap::new();
        for attachment in self.all() {
            let active = self.units.get(&attachment.unit).is_some_and(UnitState::is_active);
            let enabled = self.files.get(&attachment.unit).is_some_and(|s| s.starts_with("enabled"));
            let state = match (active, enabled, attachment.runtime) {
                (true, _, false) => State::Running,
                (true, _, true) => State::RunningRuntime,
                (false, true, false) => State::Enabled,
                (false, true, true) => State::EnabledRuntime,
                (false, false, false) => State::Attached,
                (false, false, true) => State::AttachedRuntime,
            };
            let entry = states.entry(attachment.image.clone()).or_insert(state);
            *entry = (*entry).max(state);
        }
        states
    }

    /// systemd's ActiveState of `unit` ("inactive" when it is not loaded).
    pub fn active_state(&self, unit: &str) -> &str {
        self.units.get(unit).map_or("inactive", |s| s.active_state.as_str())
    }

    /// Takes a unit's new ActiveState, as systemd announced it; false when
    /// the unit is none of the attached ones (nothing changed).
    pub fn set_active_state(&mut self, unit: &str, active_state: &str) -> bool {
        if !self.all().any(|a| a.unit == unit) {
            return false;
        }
        let entry = self.units.entry(unit.to_string()).or_insert_with(|| UnitState {
            name: unit.to_string(),
            load_state: "loaded".to_string(),
            active_state: String::new(),
        });
        entry.active_state = active_state.to_string();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(image: &str, unit: &str, runtime: bool) -> Attachment {
        Attachment { image: image.to_string(), unit: unit.to_string(), runtime }
    }

    fn unit(name: &str, active_state: &str) -> (String, UnitState) {
        let state = UnitState { name: name.into(), load_state: "loaded".into(), active_state: active_state.into() };
        (name.to_string(), state)
    }

    #[test]
    fn an_image_is_as_far_along_as_its_furthest_unit() {
        let view = HostView {
            wharf: Attachments(vec![
                attachment("/p/a.raw", "a.service", false),
                attachment("/p/a.raw", "a.socket", false),
                attachment("/p/b", "b.service", true),
                attachment("/p/c", "c.service", false),
                attachment("/p/d", "d@.service", false),
            ]),
            portabled: vec![attachment("/p/e", "e.service", false)],
            units: [unit("a.socket", "active"), unit("b.service", "inactive"), unit("c.service", "failed")].into(),
            files: [("b.service".to_string(), "enabled-runtime".to_string())].into(),
            ..HostView::default()
        };
        let states = view.states();
        assert_eq!(states["/p/a.raw"], State::Running);
        assert_eq!(states["/p/b"], State::EnabledRuntime);
        assert_eq!(states["/p/c"], State::Attached);
        assert_eq!(states["/p/d"], State::Attached);
        assert_eq!(states["/p/e"], State::Attached);
        assert_eq!(states.get("/p/f"), None);
        assert_eq!(view.portabled_images().into_iter().collect::<Vec<_>>(), ["/p/e"]);
        assert_eq!(view.unit_names(), ["a.service", "a.socket", "b.service", "c.service", "d@.service", "e.service"]);
    }

    #[test]
    fn announced_states_change_only_attached_units() {
        let mut view =
            HostView { wharf: Attachments(vec![attachment("/p/a", "a.service", false)]), ..HostView::default() };
        assert_eq!(view.active_state("a.service"), "inactive");
        assert!(view.set_active_state("a.service", "active"));
        assert_eq!(view.states()["/p/a"], State::Running);
        assert!(!view.set_active_state("other.service", "active"));
        assert!(!view.units.contains_key("other.service"));
        assert!(view.set_active_state("a.service", "deactivating"));
        assert_eq!(view.states()["/p/a"], State::Running);
        assert!(view.set_active_state("a.service", "inactive"));
        assert_eq!(view.states()["/p/a"], State::Attached);
    }
}
