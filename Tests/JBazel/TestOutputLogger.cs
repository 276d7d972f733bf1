using Microsoft.Extensions.Logging;

namespace Rbs.Tests.JBazel;

/// <summary>Routes host logs to the test's output; swallows writes after the test has finished.</summary>
internal sealed class TestOutputLoggerProvider(ITestOutputHelper output) : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new TestOutputLogger(output, categoryName);

    public void Dispose()
    {
    }

    private sealed class TestOutputLogger(ITestOutputHelper output, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
            {
                return;
            }

            TestLog.Write(output, $"[{logLevel}] {category}: {formatter(state, exception)}{(exception is null ? "" : " " + exception)}");
        }
    }
}

internal static class TestLog
{
    public static void Write(ITestOutputHelper output, string line)
    {
        try
        {
            output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {line}");
        }
        catch (InvalidOperationException)
        {
            // The test already finished; late host logs have nowhere to go.
        }
    }
}
