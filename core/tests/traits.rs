//! Handles are `Clone + Send + Sync`: they can be moved into tasks, actors and threads.

use rayhpc::{ActorHandle, ObjectRef, RemoteFn, Runtime};

fn shareable<T: Clone + Send + Sync + 'static>() {}

#[test]
fn handles_are_clone_send_and_sync() {
    struct NotSync(std::cell::Cell<u8>); // an actor state need not be Sync
    shareable::<Runtime>();
    shareable::<ObjectRef<Vec<u8>>>();
    shareable::<ActorHandle<NotSync>>();
    shareable::<RemoteFn<(u64, String), Vec<u8>>>();
    // And the errors travel between threads too.
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<rayhpc::Error>();
    let _ = NotSync(std::cell::Cell::new(0)).0.get();
}
