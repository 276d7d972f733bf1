using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>Routes a component's log lines to the test's output, so a failure shows what the store did.</summary>
internal sealed class TestOutputLogger<T>(ITestOutputHelper output) : ILogger<T>
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        try
        {
            output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel} {typeof(T).Name}[{eventId.Id}] {formatter(state, exception)}");
        }
        catch (InvalidOperationException)
        {
            // Background work that outlives its test has no output to write to any more.
        }
    }
}
