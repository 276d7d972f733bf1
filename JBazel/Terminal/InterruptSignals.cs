using System.Runtime.InteropServices;

namespace Rbs.JBazel.Terminal;

/// <summary>
/// Ctrl-C handling: the first SIGINT/SIGTERM cancels <see cref="First"/> (jbazel forwards an interrupt
/// and keeps streaming until bazel exits); the second cancels <see cref="Second"/> (forced interrupt,
/// exit at once). The default termination is suppressed so jbazel always decides how it ends.
/// </summary>
internal sealed class InterruptSignals : IDisposable
{
    private readonly CancellationTokenSource _first = new();
    private readonly CancellationTokenSource _second = new();
    private readonly List<PosixSignalRegistration> _registrations = [];
    private int _count;

    public CancellationToken First => _first.Token;

    public CancellationToken Second => _second.Token;

    public static InterruptSignals Register()
    {
        var signals = new InterruptSignals();
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
        {
            signals._registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                signals.Raise();
            }));
        }

        return signals;
    }

    /// <summary>Counts one interrupt; also how tests drive this class without signals.</summary>
    internal void Raise()
    {
        // Run the cancellation callbacks off the signal-dispatch thread: they write to the network.
        var source = Interlocked.Increment(ref _count) == 1 ? _first : _second;
        _ = Task.Run(() =>
        {
            try
            {
                source.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // jbazel is already on its way out.
            }
        });
    }

    public void Dispose()
    {
        foreach (var registration in _registrations)
        {
            registration.Dispose();
        }

        _first.Dispose();
        _second.Dispose();
    }
}
