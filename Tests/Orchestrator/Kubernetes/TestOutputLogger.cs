using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>Routes ILogger output to xunit's per-test output, so a failing test shows what the service did.</summary>
internal sealed class TestOutputLogger<T>(ITestOutputHelper output, Action<string>? onMessage = null) : ILogger<T>
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        onMessage?.Invoke(formatter(state, exception));
        try
        {
            output.WriteLine($"[{DateTime.UtcNow:HH:mm:ss.fff}] {logLevel} {typeof(T).Name}: {formatter(state, exception)}{(exception is null ? "" : " " + exception.GetType().Name)}");
        }
        catch (InvalidOperationException)
        {
            // The test already finished; xunit refuses late output.
        }
    }
}
