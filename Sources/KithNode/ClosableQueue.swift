import Dispatch
import Synchronization

/// A queue any thread adds to and one thread drains, until it is closed: the writer's queue
/// (`WriterQueue`) and the replication thread's inbox. The semaphore is signalled once for each
/// item added, and at close, so the draining thread sleeps while there is nothing to do.
final class ClosableQueue<Item: Sendable>: Sendable {
    private let state = Mutex<(items: [Item], closed: Bool)>(([], false))
    let wakeup = DispatchSemaphore(value: 0)

    /// Adds `item` unless the queue is closed; returns whether it was added.
    @discardableResult
    func add(_ item: Item) -> Bool {
        let added = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.items.append(item)
            return true
        }
        if added { wakeup.signal() }
        return added
    }

    /// Nothing is added from now on; what is queued stays to be drained.
    func close() {
        state.withLock { $0.closed = true }
        wakeup.signal()
    }

    var isClosed: Bool { state.withLock { $0.closed } }
    var count: Int { state.withLock { $0.items.count } }

    /// The queued items and whether the queue is closed, under the lock (to take one, several or
    /// all of them at once).
    func withItems<T>(_ body: (inout [Item], _ closed: Bool) -> T) -> T { state.withLock { body(&$0.items, $0.closed) } }
}
