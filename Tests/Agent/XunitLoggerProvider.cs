using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Agent;

/// <summary>Routes a host's logs to the test's output, so a failing test shows what the agent did.</summary>
internal sealed class XunitLoggerProvider(ITestOutputHelper output, string prefix = "") : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new XunitLogger(output, prefix, categoryName);

    public void Dispose()
    {
    }

    private sealed class XunitLogger(ITestOutputHelper output, string prefix, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var shortCategory = category[(category.LastIndexOf('.') + 1)..];
            var line = $"{DateTime.UtcNow:HH:mm:ss.fff} {prefix}{logLevel.ToString()[..4]} {shortCategory}[{eventId.Id}] {formatter(state, exception)}";
            if (exception is not null)
            {
                line += Environment.NewLine + exception;
            }

            TestLog.Write(output, line);
        }
    }
}

internal static class TestLog
{
    /// <summary>ITestOutputHelper throws once its test has finished; late log lines from background work are dropped.</summary>
    public static void Write(ITestOutputHelper output, string line)
    {
        try
        {
            output.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
        }
    }
}
