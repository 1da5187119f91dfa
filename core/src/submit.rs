//! Submitting work to a runtime: a call of a remote function becomes a task spec, an actor
//! class's `remote` an actor cell and its creation job; the task layer then waits for their
//! argument refs and queues them. The `remote` calls of [`RemoteFn`] and [`ActorClass`],
//! which take the [`Runtime`] they submit to, are here, above it, so that functions and
//! actor classes are defined below the runtime.

use std::sync::Arc;

use rayhpc_sched::ClassId;

use crate::actor::{ActorClass, ActorHandle};
use crate::error::{Error, Result};
use crate::function::{ArgSpecPub, IntoArgs, RemoteFn};
use crate::ids::ActorId;
use crate::invoke::{ClassEntry, FnEntry};
use crate::object::{ArgSpec, ObjectRef, Slot, TaskSpec};
use crate::options::{Options, DEFAULT_MAX_RETRIES};
use crate::runtime::Runtime;
use crate::state::{ActorCell, CreateSpec};
use crate::task::{submit_when_ready, Work};

impl Runtime {
    /// Checks that a task with options `o` could ever run here (what a submit would refuse:
    /// malformed or infeasible resources), without submitting anything.
    ///
    /// # Errors
    /// [`Error::Resources`] as a submit would return it; [`Error::Shutdown`].
    pub fn check_task_options(&self, o: &Options) -> Result<()> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        self.inner.pool().class(&o.request(1.0)).map(drop).map_err(Error::from)
    }

    pub(crate) fn submit_task<R>(&self, func: &'static FnEntry, args: Vec<ArgSpecPub>, o: &Options) -> Result<ObjectRef<R>> {
        self.submit_specs(func, args.into_iter().map(|a| a.0).collect(), o)
    }

    /// [`Runtime::submit_task`] with the arguments in the runtime's own form.
    pub(crate) fn submit_specs<R>(&self, func: &'static FnEntry, args: Vec<ArgSpec>, o: &Options) -> Result<ObjectRef<R>> {
        let inner = &self.inner;
        if inner.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let class = match inner.cpu1.get().copied().flatten() {
            Some(c) if o.default_resources() => c,
            _ => inner.pool().class(&o.request(1.0))?,
        };
        let id = inner.next_task_id();
        let ret = Slot::new(id.object(0));
        let spec = TaskSpec {
            id,
            func,
            args,
            class,
            retries_left: o.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            retry_exceptions: o.retry_exceptions.unwrap_or(false),
            attempts: 0,
            name: o.name.as_deref().map(Arc::from),
            ret: ret.clone(),
        };
        submit_when_ready(inner, Work::Task(Box::new(spec)), class);
        Ok(ObjectRef::from_slot(ret))
    }

    pub(crate) fn create_actor(&self, class: Arc<ClassEntry>, o: &Options, args: Vec<ArgSpec>) -> Result<Arc<ActorCell>> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let pool = self.inner.pool();
        // An actor holds no resources unless asked to (Ray: 0 CPUs for its life by default).
        let res_class = if o.default_resources() { ClassId::FREE } else { pool.class(&o.request(0.0))? };
        let id = ActorId(self.next_task_id().0);
        let cell = ActorCell::new(id, class, o.name.clone(), self.inner.clone());
        if let Some(n) = &o.name {
            let mut m = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
            if m.contains_key(n) {
                return Err(Error::NameTaken(n.clone()));
            }
            m.insert(n.clone(), cell.clone());
        }
        let spec = CreateSpec { cell: cell.clone(), args, holds_resources: res_class != ClassId::FREE };
        submit_when_ready(&self.inner, Work::ActorCreate(Box::new(spec)), res_class);
        Ok(cell)
    }
}

impl<Args, R> RemoteFn<Args, R> {
    /// Submits a call: returns at once with the future of its result.
    ///
    /// # Errors
    /// Arguments that cannot be encoded, a resource request the runtime can never satisfy,
    /// or a runtime that is shut down.
    pub fn remote(&self, rt: &Runtime, args: impl IntoArgs<Args>) -> Result<ObjectRef<R>> {
        rt.submit_task(self.entry, args.into_args()?, &self.defaults)
    }

    /// Submits a call with options that override the defaults for this call only.
    ///
    /// # Errors
    /// As [`RemoteFn::remote`].
    pub fn remote_with(&self, rt: &Runtime, options: &Options, args: impl IntoArgs<Args>) -> Result<ObjectRef<R>> {
        rt.submit_task(self.entry, args.into_args()?, &self.defaults.merged(options))
    }
}

impl<A: Send + 'static, CArgs> ActorClass<A, CArgs> {
    /// Creates an actor. Returns its handle at once; calls made before the constructor has
    /// run wait for it.
    ///
    /// # Errors
    /// Unencodable arguments, an infeasible resource request, a name already taken, or a
    /// runtime that is shut down.
    pub fn remote(&self, rt: &Runtime, args: impl IntoArgs<CArgs>) -> Result<ActorHandle<A>> {
        self.remote_with(rt, &Options::default(), args)
    }

    /// Creates an actor with options that override the class defaults.
    ///
    /// # Errors
    /// As [`ActorClass::remote`].
    pub fn remote_with(&self, rt: &Runtime, options: &Options, args: impl IntoArgs<CArgs>) -> Result<ActorHandle<A>> {
        let o = self.defaults.merged(options);
        let args = args.into_args()?.into_iter().map(|a| a.0).collect();
        let cell = rt.create_actor(self.entry.clone(), &o, args)?;
        Ok(ActorHandle::new(cell))
    }

    /// Creates an actor from arguments already in the runtime's form (the raw API).
    pub(crate) fn remote_specs(&self, rt: &Runtime, options: &Options, args: Vec<ArgSpec>) -> Result<ActorHandle<A>> {
        let o = self.defaults.merged(options);
        let cell = rt.create_actor(self.entry.clone(), &o, args)?;
        Ok(ActorHandle::new(cell))
    }
}
