using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Gateway;

/// <summary>Routes a host's logs to the test output and counts RBS event ids so tests can assert on them.</summary>
internal sealed class TestLoggerProvider(ITestOutputHelper output, string prefix) : ILoggerProvider
{
    private readonly ConcurrentDictionary<int, int> _eventCounts = new();

    public int Count(int eventId) => _eventCounts.TryGetValue(eventId, out var n) ? n : 0;

    public ILogger CreateLogger(string categoryName) => new TestLogger(this, categoryName);

    public void Dispose()
    {
    }

    private void Write(string category, LogLevel level, EventId eventId, string message, Exception? exception)
    {
        if (category.StartsWith("Rbs.", StringComparison.Ordinal))
        {
            _eventCounts.AddOrUpdate(eventId.Id, 1, (_, n) => n + 1);
        }

        var shortCategory = category[(category.LastIndexOf('.') + 1)..];
        try
        {
            output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} [{prefix}] {level.ToString()[..4]} {shortCategory}[{eventId.Id}]: {message}{(exception is null ? "" : " | " + exception.GetType().Name + ": " + exception.Message)}");
        }
        catch (InvalidOperationException)
        {
            // The test already finished; late shutdown logs have nowhere to go.
        }
    }

    private sealed class TestLogger(TestLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) =>
            category.StartsWith("Rbs.", StringComparison.Ordinal) ? logLevel >= LogLevel.Debug
            : category.StartsWith("Microsoft.Hosting.Lifetime", StringComparison.Ordinal) ? logLevel >= LogLevel.Information
            : category.StartsWith("Microsoft.AspNetCore.Server.Kestrel", StringComparison.Ordinal) ? logLevel >= LogLevel.Debug : logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                provider.Write(category, logLevel, eventId, formatter(state, exception), exception);
            }
        }
    }
}
